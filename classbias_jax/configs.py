"""Config helpers: the base config every study starts from, the `runlocal,key=value`
argument parser, and validation of a resolved config."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import ml_collections

from classbias_jax.errors import ConfigError

# Where an op runs, in the order of the train step (augment.preprocess runs the first four;
# the step reads the knobs of the last itself, train/one_model.py):
STAGES = {
    'pixels': 'each image, on [0, 1] pixels before normalisation',
    'normalised': 'each image, after normalisation',
    'targets': "each image's soft target [num_classes]",
    'batch': "the model's whole normalised batch and its soft targets",
    'step': 'the train step itself: optimiser, loss',
}


@dataclasses.dataclass(frozen=True)
class Knob:
  """One row of KNOBS: a config field that changes what each model trains with.

  default: the base config's value. op: what consumes it: an op whose kernel is
  augment.KERNELS[op] (its parameters after the key and the input are the short names of
  the op's knobs), or a name read by the train step ('optimizer', 'loss'). stage: where
  the op runs (STAGES; every row of an op gives the same). off: the value at which the
  knob does nothing (None: no such value); an op is compiled when any model has one of
  its knobs away from `off`, and the analysis uses `off` as the "knob off" reference.
  traced: a per-model array [M] on device, so it can be swept inside one program (else a
  static, compiled-in value). per_class: may be given as a table of one value per class,
  looked up by each image's label (`class_knobs`). low, high: the values that mean
  something (a value outside, NaN or inf is an error before anything runs). at_most: the
  dotted name of the knob this one may not exceed (a range's min names its max).
  log_scale: figures put the swept values on a log axis.
  """
  default: float
  op: str
  stage: str
  off: float | None = None
  traced: bool = True
  per_class: bool = False
  low: float = 0.0  # the values `validate` accepts, bounds included
  high: float = math.inf
  at_most: str | None = None
  log_scale: bool = False


# The one table of knobs. A new knob is one row here, plus its op's kernel in
# augment.KERNELS when it feeds a new op (a new op's rows go after its stage's other rows,
# so the ops before it keep their random draws). Short names (the last part) are unique.
KNOBS = {
    'optim.learning_rate': Knob(0.1, 'optimizer', 'step', low=1e-12,
                                log_scale=True),  # peak, for batch_size
    # L2 added to the gradient
    'optim.weight_decay': Knob(5e-4, 'optimizer', 'step', off=0.0, log_scale=True),
    'aug.pad_crop': Knob(0, 'pad_crop', 'pixels', off=0, traced=False),  # CIFAR crop, zero padding
    # RandomResizedCrop back to the input size; scale (1, 1) is no crop.
    'aug.crop_scale_min': Knob(1.0, 'crop', 'pixels', off=1.0, per_class=True, low=1e-6,
                               high=1.0, at_most='aug.crop_scale_max'),
    'aug.crop_scale_max': Knob(1.0, 'crop', 'pixels', off=1.0, per_class=True, low=1e-6,
                               high=1.0),
    'aug.crop_ratio_min': Knob(3 / 4, 'crop', 'pixels', per_class=True, low=1e-6,
                               at_most='aug.crop_ratio_max'),
    'aug.crop_ratio_max': Knob(4 / 3, 'crop', 'pixels', per_class=True, low=1e-6),
    # horizontal flip
    'aug.flip_prob': Knob(0.0, 'flip', 'pixels', off=0.0, per_class=True, high=1.0),
    # ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) at strength s
    'aug.color_strength': Knob(0.0, 'color', 'pixels', off=0.0, per_class=True),
    # RandomErasing, on normalised images
    'aug.erase_prob': Knob(0.0, 'erase', 'normalised', off=0.0, per_class=True, high=1.0),
    'aug.erase_scale_min': Knob(0.02, 'erase', 'normalised', per_class=True, low=1e-6,
                                high=1.0, at_most='aug.erase_scale_max'),
    'aug.erase_scale_max': Knob(0.33, 'erase', 'normalised', per_class=True, low=1e-6,
                                high=1.0),
    'aug.erase_ratio_min': Knob(0.3, 'erase', 'normalised', per_class=True, low=1e-6,
                                at_most='aug.erase_ratio_max'),
    'aug.erase_ratio_max': Knob(3.3, 'erase', 'normalised', per_class=True, low=1e-6),
    # in normalised units: 0 erases to the dataset mean
    'aug.erase_value': Knob(0.0, 'erase', 'normalised', per_class=True, low=-math.inf),
    # Label smoothing as optax.smooth_labels: a class's target (1 - a) one_hot + a / C,
    # with a per class allowed (each image's target smoothed by its class's value).
    'loss.label_smoothing': Knob(0.0, 'smooth', 'targets', off=0.0, per_class=True,
                                 high=1.0),
    # timm's Mixup in batch mode (mix.py): each batch is mixed with probability mix_prob,
    # with its reverse, lambda ~ Beta(alpha, alpha); CutMix instead of Mixup with
    # probability mix_switch_prob when both alphas are > 0 (alpha 0: that kind is off).
    'aug.mixup_alpha': Knob(0.0, 'mix', 'batch', off=0.0, log_scale=True),
    'aug.cutmix_alpha': Knob(0.0, 'mix', 'batch', off=0.0, log_scale=True),
    'aug.mix_prob': Knob(1.0, 'mix', 'batch', high=1.0),
    'aug.mix_switch_prob': Knob(0.5, 'mix', 'batch', high=1.0),
    # Per-class loss weights (class_weights.py): the rate of the multiplicative update
    # w_c <- w_c exp(-rate * training accuracy of c) each epoch; 1 is CLAM's rule.
    'loss.class_weight_rate': Knob(0.0, 'loss', 'step', off=0.0),
    # Gradual magnitude pruning (train/prune.py): each model's target fraction of zero
    # convolution and dense weights, in [0, 1); the ramp's first and last epoch (may be
    # fractions; the last at most train.epochs) and the steps between mask updates.
    'prune.sparsity': Knob(0.0, 'prune', 'step', off=0.0, high=0.999),
    'prune.start_epoch': Knob(10.0, 'prune', 'step', traced=False),
    'prune.end_epoch': Knob(20.0, 'prune', 'step', traced=False),
    'prune.every_steps': Knob(100, 'prune', 'step', traced=False, low=1),
}
# The sweep over the arms of a fix study (arms.py), in place of a knob.
ARM_SWEEP = 'fix.arm'
# The model axis (model_axis.py): 'rule' is the documented per-backend rule; 'auto'
# measures the candidates on this machine (opt-in; tuning/strategy.py).
STRATEGIES = ('rule', 'auto', 'unroll', 'vmap', 'chunked', 'map', 'sequential', 'shard',
              'shard:unroll', 'shard:vmap', 'shard:chunked', 'shard:map', 'mesh')  # and 'mesh:AxB'


def short_name(dotted: str) -> str:
  """'aug.color_strength' -> 'color_strength', the name train/one_model.py and augment.py read."""
  return dotted.rsplit('.', 1)[-1]


def traced_knobs() -> list[str]:
  """Dotted names of the knobs that may be swept inside one program."""
  return [name for name, knob in KNOBS.items() if knob.traced]


def knobs_of(op: str) -> tuple[str, ...]:
  """Short names of the knobs that feed `op` (its kernel's keyword parameters), in table
  order."""
  return tuple(short_name(n) for n, k in KNOBS.items() if k.op == op)


def ops_of(stage: str) -> tuple[str, ...]:
  """The ops that run at `stage` (STAGES), in table order of their first row."""
  return tuple(dict.fromkeys(k.op for k in KNOBS.values() if k.stage == stage))


def static_values(config) -> dict[str, float]:
  """Short name -> the config's value of every knob that is not traced (compiled in)."""
  return {short_name(n): get_field(config, n) for n, k in KNOBS.items() if not k.traced}


def log_scale(sweep_name: str) -> bool:
  """Whether figures put the values of the knob `sweep_name` (dotted) on a log axis."""
  return sweep_name in KNOBS and KNOBS[sweep_name].log_scale


def defaults() -> dict[str, float]:
  """Short name -> the base config's value of every knob."""
  return {short_name(n): k.default for n, k in KNOBS.items()}


def off_values() -> dict[str, float]:
  """Short name -> the value at which the knob does nothing, for knobs that have one."""
  return {short_name(n): k.off for n, k in KNOBS.items() if k.off is not None}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'runlocal,seeds=4' against `defaults` (name -> default value).

  A bare name sets a bool to True; `key=value` is converted to the default's type.
  Unknown keys are an error, so a typo never silently runs the default study.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f'unknown config arg {key!r}; known: {", ".join(sorted(defaults))}')
    kind = type(defaults[key])
    if not eq:
      if kind is not bool:
        raise ConfigError(f'config arg {key!r} needs a value ({key}=...)')
      out[key] = True
    elif kind is bool:
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ConfigError(f'config arg {key}={value!r} is not a bool')
      out[key] = value.lower() in ('true', '1')
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise ConfigError(f'config arg {key}={value!r} is not a {kind.__name__}') from None
  return out


def _train_config() -> ml_collections.ConfigDict:
  """The `train` fields: epochs, batches, the model axis, checkpoints, the compile cache."""
  t = ml_collections.ConfigDict()
  t.epochs = 30
  t.batch_size = 128
  t.eval_batch_size = 500
  t.eval_every = 0  # evaluate on test every k epochs for curves (0: only at the end)
  # The model axis (model_axis.py): 'rule' (the per-backend rule), 'auto' (measured on
  # this machine), or a strategy by name: unroll, vmap, chunked, sequential, shard[:inner],
  # mesh (a 2-D mesh of models x data over all devices)
  t.strategy = 'rule'
  # mesh: devices on the model axis and on the data axis (0 = chosen from the device count,
  # M and the batch size; the run prints and records the shape it uses)
  t.mesh_models = 0
  t.mesh_data = 0
  t.chunk_size = 4  # models per vmapped chunk for strategy 'chunked'
  t.loop = 'auto'  # 'scan': an epoch per compiled call; 'python': a step per call
  # Checkpoints in WORKDIR/checkpoint, from which the same command resumes (train/epochs.py): after
  # every k-th epoch, every n-th step, and at the first step boundary t minutes after the
  # last save (0: off). They never change results; SIGTERM/SIGINT also save one.
  t.checkpoint_every = 0
  t.checkpoint_every_steps = 0
  t.checkpoint_minutes = 10.0
  # Several processes (docs/scale.md): seconds a process waits for its partners to join,
  # and for a silent partner, before every process of the job stops with one line.
  t.partner_timeout_s = 120.0
  # JAX's persistent compilation cache ('' = off; $CLASSBIAS_COMPILE_CACHE overrides):
  # a rerun of a study skips compilation. It never changes what runs.
  t.compile_cache = os.path.join('~', '.cache', 'classbias_jax', 'jax')
  # TensorBoard (train/summaries.py), in WORKDIR/tensorboard: per-epoch loss and accuracy and
  # per-class test accuracy of every model, written when the tensorboard package is
  # installed (the `tensorboard` extra). Neither field changes results.
  t.tensorboard = True
  # (first step, count): a jax.profiler trace of those steps (counted from 0 over the run)
  # for TensorBoard's profile tab, e.g. (10, 3); () = none
  t.profile_steps = ()
  return t


def base_config() -> ml_collections.ConfigDict:
  """Every field a study may set, with its default. Studies override what they sweep."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # seed values are seed, seed + 1, ..., seed + seeds - 1
  c.seeds = 8  # S: models per sweep value, differing only in their seed

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cifar100'  # 'planted', 'digits', a TFDS name, ...
  c.data.data_dir = ''  # '' = the source's default location
  c.data.val_fraction = 0.0  # stratified validation split carved from train
  c.data.train_subset = 0  # 0 = all training images; else a stratified subsample
  c.data.image_size = 0  # 0 = native size
  c.data.split_seed = 0  # fixes generated data and data splits (not the models' seeds)
  c.data.planted_train_per_class = 500
  c.data.planted_shortcut = ''  # 'frame' or 'zoom': a knob that also helps classes (planted.load)
  c.data.class_words = ''  # a words file naming class ids ('n01440764 tench, ...'): data/class_words.py
  c.data.planted_rare = 0  # > 0: training images of the rare classes (planted.load)
  c.data.planted_mixed = ''  # 'blend' or 'paste': a class mixing makes (planted.load)
  c.data.planted_mixed_train = 0  # its training images (with planted_mixed)
  # 'resident': uint8 images on device, each model its own data order; 'streamed': a grain
  # pipeline feeds host batches shared by all models; 'auto': resident when the images fit
  # a quarter of the device's memory (2 GiB on CPU), else streamed (train.resolve_input_mode)
  c.data.input_mode = 'auto'
  # streamed mode: grain worker processes that read and decode (0 = in the main process);
  # the batches are the same whatever the number
  c.data.workers = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet20'
  c.model.width = 1.0  # multiplies every stage width
  c.model.dtype = 'float32'  # compute dtype ('bfloat16' for GPU/TPU); params stay float32

  c.sweep = ml_collections.ConfigDict()
  c.sweep.name = 'optim.weight_decay'  # dotted path of the swept field (a traced row of KNOBS)
  c.sweep['values'] = (0.0, 5e-4)  # V values

  c.train = _train_config()

  c.optim = ml_collections.ConfigDict()
  c.optim.momentum = 0.9
  c.optim.warmup_epochs = 1.0  # linear warmup, then cosine decay to 0

  for dotted, knob in KNOBS.items():
    section, name = dotted.split('.')
    if section not in c:
      c[section] = ml_collections.ConfigDict()
    c[section][name] = knob.default

  # Class-conditional knobs: short knob name -> one value per class (NaN = the model's own
  # value), e.g. class_knobs.color_strength = (0, nan, ...) turns jitter off for class 0.
  c.class_knobs = ml_collections.ConfigDict()
  return c


def load(spec: str, root: str = '.') -> ml_collections.ConfigDict:
  """'configs/wd.py:runlocal,seeds=2' -> that study's ConfigDict, as `--config=spec` gives.

  Relative paths are taken from `root` (the repository, for notebooks).
  """
  import importlib.util
  path, _, arg = spec.partition(':')
  path = os.path.join(root, path)
  if not os.path.isfile(path):
    raise ConfigError(f'no config file {path}')
  module_spec = importlib.util.spec_from_file_location('study_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def smoke(config) -> ml_collections.ConfigDict:
  """Shrinks a (runlocal) study to seconds for smoke tests: the tiny model, the sweep's two
  ends, one seed, one epoch, fewer generated images."""
  values = tuple(config.sweep['values'])
  config.sweep['values'] = (values[0], values[-1])
  config.model.name = 'tiny'
  config.seeds = 1
  config.train.epochs = 1
  if config.data.name.startswith('planted'):  # a field other datasets refuse (data.READ_BY)
    config.data.planted_train_per_class = 100
  return config


def shortcut_sweep(c, study: str, args, kind: str, values: tuple, epochs: int) -> None:
  """Makes a runlocal study the sweep a fix starts from (configs/fix.py): the planted
  data with `kind` of shortcut (planted.load), a validation split drawn like test and
  8 seeds, which the per-class evidence on validation needs."""
  if not args.runlocal:
    raise ConfigError(f'{study}.py: shortcut goes with runlocal (the planted data)')
  c.data.planted_shortcut = kind
  c.data.val_fraction = 0.25  # 50 validation images per class
  c.sweep['values'] = values
  c.seeds = args.seeds or 8
  c.train.epochs = args.epochs or epochs


def get_field(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _check_knobs(config) -> None:
  """Every knob's value, swept values and per-class values inside its row's range."""
  for dotted, knob in KNOBS.items():
    values = [get_field(config, dotted)]
    if dotted == config.sweep.name:
      values += list(config.sweep['values'])
    values += [v for v in config.get('class_knobs', {}).get(short_name(dotted), ())
               if not math.isnan(v)]  # NaN in a class table: the model's own value
    for v in values:
      if not math.isfinite(v) or not knob.low <= v <= knob.high:
        raise ConfigError(f'{dotted} = {v} is outside [{knob.low:g}, {knob.high:g}]')
  _check_pairs(config)


def pairs() -> tuple[tuple[str, str], ...]:
  """The knobs that bound a range, (low, high) from the rows' `at_most`: each model's and
  each class's low must be at most its high."""
  return tuple((low, knob.at_most) for low, knob in KNOBS.items() if knob.at_most)


def knob_values(config, dotted: str) -> list[float]:
  """The values a knob takes over the models: the swept values, else its one fixed value."""
  if dotted == config.sweep.name:
    return [float(v) for v in config.sweep['values']]
  return [float(get_field(config, dotted))]


def _class_values(config, dotted: str, model_value: float) -> list[float]:
  """A model's value for each class: its class_knobs table (NaN: the model's own value),
  else the model's value."""
  table = config.get('class_knobs', {}).get(short_name(dotted), ())
  return [model_value if math.isnan(v) else float(v) for v in table] or [model_value]


def _broadcast(lows: list[float], highs: list[float]) -> list[tuple[float, float]]:
  """Pairs two lists, a one-value list standing for that value everywhere."""
  n = max(len(lows), len(highs))
  return [(lows[min(k, len(lows) - 1)], highs[min(k, len(highs) - 1)]) for k in range(n)]


def check_pair(low_name: str, lows: list[float], high_name: str, highs: list[float],
               where: str = '') -> None:
  """ConfigError when a low value exceeds the high value it pairs with (a one-value list
  pairs with every value of the other, else element by element)."""
  for low, high in _broadcast(lows, highs):
    if low > high:
      raise ConfigError(f'{low_name} {low:g} exceeds {high_name} {high:g}{where}: the range '
                        'would be empty')


def _check_pairs(config) -> None:
  """Every model's (and every class's) low end of a range at most its high end: a swept
  value against the fixed value it pairs with, and per-class tables against both."""
  tables = config.get('class_knobs', {})
  for low_name, high_name in pairs():
    if config.sweep.name in (low_name, high_name):
      where = f' (a value of the sweep of {config.sweep.name} against the fixed one)'
    else:
      where = ''
    if short_name(low_name) in tables or short_name(high_name) in tables:
      where = ' for a class (class_knobs)'
    for low, high in _broadcast(knob_values(config, low_name), knob_values(config, high_name)):
      check_pair(low_name, _class_values(config, low_name, low), high_name,
                 _class_values(config, high_name, high), where)


# Fields that never change results: when and where to save, how long to wait for partner
# processes, compilation, input workers, TensorBoard summaries and profiles.
NEUTRAL_FIELDS = ('train.checkpoint_every', 'train.checkpoint_every_steps',
                  'train.checkpoint_minutes', 'train.partner_timeout_s', 'train.compile_cache',
                  'data.workers', 'train.tensorboard', 'train.profile_steps')


def results_config(config_json: dict) -> dict:
  """A config as config.json holds it, without 'resolved' and the NEUTRAL_FIELDS: the
  fields that decide a study's results."""
  config = {k: v for k, v in config_json.items() if k != 'resolved'}
  for dotted in NEUTRAL_FIELDS:
    section, name = dotted.split('.')
    if isinstance(config.get(section), dict):
      config[section] = {k: v for k, v in config[section].items() if k != name}
  return config


def fingerprint(config_json: dict) -> str:
  """The study a config.json describes, as 16 hex digits of the SHA-256 of its
  results_config in sorted JSON: equal for two runs that give the same results."""
  text = json.dumps(results_config(config_json), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# A fix study (configs/fix.py, train/arms.py) sweeps arms, not a knob's values.
ARMS = ('uniform', 'off', 'policy', 'loss_weights', 'per_class', 'protect')
POLICY_FILE = 'policy.json'  # written into a sweep's workdir by `python -m classbias_jax.fix`


def arm_names(values) -> list[str]:
  """The arm name of each sweep value of a fix study."""
  return [ARMS[int(v)] for v in values]


def _validate_arms(config) -> None:
  """Raises ConfigError unless sweep.values name distinct arms and fix.policy_from is set."""
  values = tuple(config.sweep['values'])
  if not values or any(float(v) != int(v) or not 0 <= int(v) < len(ARMS) for v in values):
    raise ConfigError(f'{ARM_SWEEP} values must be arm indices 0..{len(ARMS) - 1} '
                      f'({", ".join(f"{i}={a}" for i, a in enumerate(ARMS))}), got {values}')
  if len(set(values)) != len(values):
    raise ConfigError(f'sweep.values has repeated arms: {values}')
  if not config.get('fix', {}).get('policy_from'):
    raise ConfigError('a fix study needs --config.fix.policy_from=SWEEP_DIR (a sweep '
                      'where `python -m classbias_jax.fix` wrote policy.json)')


def _validate_sweep(config) -> None:
  if config.sweep.name == ARM_SWEEP:
    _validate_arms(config)
  elif config.sweep.name not in traced_knobs():
    raise ConfigError(f'sweep.name {config.sweep.name!r} cannot be swept inside one program; '
                      f'choose one of {", ".join(traced_knobs())}')
  values = tuple(config.sweep['values'])  # `.values` is ConfigDict's method
  if len(values) < 1:
    raise ConfigError('sweep.values is empty')
  if len(set(values)) != len(values):
    raise ConfigError(f'sweep.values has repeated values: {values}')
  if config.seeds < 1:
    raise ConfigError(f'seeds must be >= 1, got {config.seeds}')


def _check_watch(train) -> None:
  """train.profile_steps () or (first >= 0, count >= 1); the ConfigDict's types already
  keep train.tensorboard a bool."""
  steps = tuple(train.profile_steps)
  ints = all(isinstance(x, int) and not isinstance(x, bool) for x in steps)
  if steps and (len(steps) != 2 or not ints or steps[0] < 0 or steps[1] < 1):
    raise ConfigError(f'train.profile_steps {steps}: give (first step, count) with '
                      'first >= 0 and count >= 1, or () for no profile')


def _validate_train(config) -> None:
  if config.train.strategy not in STRATEGIES and not config.train.strategy.startswith('mesh:'):
    raise ConfigError(f'train.strategy {config.train.strategy!r}; choose one of '
                      f'{", ".join(STRATEGIES)}')
  for name in ('epochs', 'batch_size', 'eval_batch_size', 'chunk_size'):
    if config.train[name] < 1:
      raise ConfigError(f'train.{name} must be >= 1, got {config.train[name]}')
  if config.train.loop not in ('auto', 'scan', 'python'):
    raise ConfigError(f'train.loop {config.train.loop!r}; choose auto, scan or python')
  for name in ('checkpoint_every', 'checkpoint_every_steps', 'checkpoint_minutes'):
    if not config.train[name] >= 0:  # also refuses NaN
      raise ConfigError(f'train.{name} must be >= 0 (0 = off), got {config.train[name]}')
  _check_watch(config.train)
  partner_timeout(config.train)


def _validate_prune(config) -> None:
  """The pruning ramp inside training, when some model prunes."""
  sparsities = [config.prune.sparsity]
  if config.sweep.name == 'prune.sparsity':
    sparsities += list(config.sweep['values'])
  start, end = config.prune.start_epoch, config.prune.end_epoch
  if not any(sparsities) or start <= end <= config.train.epochs:
    return
  raise ConfigError(f'prune.start_epoch {start:g} <= prune.end_epoch {end:g} <= '
                    f'train.epochs {config.train.epochs} must hold for pruning')


def partner_timeout(train) -> float:
  """train.partner_timeout_s, checked: seconds, 1 to 86400 (a day)."""
  value = train.partner_timeout_s
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 86400:
    raise ConfigError(f'train.partner_timeout_s must be a number of seconds from 1 to 86400, '
                      f'got {value!r}')
  return float(value)


def validate(config) -> None:
  """Raises ConfigError when the resolved config cannot run."""
  _validate_sweep(config)
  _validate_train(config)
  if config.data.input_mode not in ('auto', 'resident', 'streamed'):
    raise ConfigError(f'data.input_mode {config.data.input_mode!r}; choose auto, resident or '
                      'streamed')
  if config.data.workers < 0:
    raise ConfigError(f'data.workers must be >= 0, got {config.data.workers}')
  if not config.model.width > 0:
    raise ConfigError(f'model.width must be > 0, got {config.model.width}')
  _check_knobs(config)
  _validate_prune(config)
  if config.model.dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'model.dtype {config.model.dtype!r}; choose float32 or bfloat16')
  per_class = [short_name(n) for n, k in KNOBS.items() if k.per_class]
  for short in config.get('class_knobs', {}):
    if short not in per_class:
      raise ConfigError(f'class_knobs.{short}: not a per-class knob; choose from '
                        f'{", ".join(per_class)}')
