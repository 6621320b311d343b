"""Config helpers: the base config every study starts from, the `runlocal,key=value`
argument parser, and validation of a resolved config."""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from classbias_jax import knob_table
from classbias_jax.errors import ConfigError
# The KNOBS table lives in knob_table.py; its names stay importable from here, where users
# and notebooks read them (configs.KNOBS, configs.short_name, ...).
from classbias_jax.knob_table import (KNOBS, STAGES, Knob, get_field,  # noqa: F401
                                      short_name, traced_knobs)

# The sweep over the arms of a fix study (arms.py), in place of a knob.
ARM_SWEEP = 'fix.arm'
# The model axis (model_axis.py): 'rule' is the documented per-backend rule; 'auto'
# measures the candidates on this machine (opt-in; tuning/strategy.py).
STRATEGIES = ('rule', 'auto', 'unroll', 'vmap', 'chunked', 'map', 'sequential', 'shard',
              'shard:unroll', 'shard:vmap', 'shard:chunked', 'shard:map', 'mesh')  # and 'mesh:AxB'


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
  # Checkpoints in WORKDIR/checkpoint, from which the same command resumes
  # (train/interrupts.py): after every k-th epoch, every n-th step, and at the first step
  # boundary t minutes after the last save (0: off). They never change results;
  # SIGTERM/SIGINT also save one.
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

  for dotted, knob in knob_table.KNOBS.items():
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


def planted_runlocal(c, args, seeds: int, epochs: int) -> None:
  """The runlocal shape of the planted studies: the planted dataset at 16x16 (4x fewer
  pixels than its 32x32 drawing, the planted effects intact), 200 training images per
  class, ResNet-8 at half width in float32, batch 64, test only at the end; `seeds` and
  `epochs` unless the args give them (a null result is one only with >= 4 seeds)."""
  _two_cores(c, args, seeds, epochs)
  c.data.name = 'planted'
  c.data.planted_train_per_class = 200
  c.data.image_size = 16
  c.train.batch_size = 64


def fashion_local(c, args, epochs: int) -> None:
  """Fashion-MNIST on two CPU cores: 6,000 stratified training images (600 per class), the
  full test set at its native 28x28, ResNet-8 at half width in float32, 4 seeds and
  `epochs` unless the args give them. The planted fields go back to their defaults, so
  that `runlocal,fashion` is the Fashion-MNIST study (a dataset refuses a field it
  ignores)."""
  defaults = base_config().data
  for field in ('planted_train_per_class', 'planted_rare', 'planted_mixed',
                'planted_mixed_train', 'planted_shortcut', 'image_size'):
    c.data[field] = defaults[field]
  _two_cores(c, args, 4, epochs)
  c.data.name = 'fashion_mnist'
  c.data.train_subset = 6000


def _two_cores(c, args, seeds: int, epochs: int) -> None:
  """What both CPU shapes share: ResNet-8 at half width in float32, test only at the end,
  `seeds` and `epochs` unless the args give them."""
  c.seeds = args.seeds or seeds
  c.model.name = 'resnet8'
  c.model.width = 0.5
  c.model.dtype = 'float32'
  c.train.epochs = args.epochs or epochs
  c.train.eval_every = 0


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
  elif config.sweep.name not in knob_table.traced_knobs():
    raise ConfigError(f'sweep.name {config.sweep.name!r} cannot be swept inside one program; '
                      f'choose one of {", ".join(knob_table.traced_knobs())}')
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
  knob_table.check_knobs(config)
  _validate_prune(config)
  if config.model.dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'model.dtype {config.model.dtype!r}; choose float32 or bfloat16')
  per_class = [short_name(n) for n, k in knob_table.KNOBS.items() if k.per_class]
  for short in config.get('class_knobs', {}):
    if short not in per_class:
      raise ConfigError(f'class_knobs.{short}: not a per-class knob; choose from '
                        f'{", ".join(per_class)}')
