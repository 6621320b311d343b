"""Config helpers: the base config every study starts from, the `runlocal,key=value`
argument parser, and validation of a resolved config."""
from __future__ import annotations

import os

import ml_collections

from classbias_jax.errors import ConfigError

# Knobs that are traced per model (arrays [M]) and so may be swept inside one program.
TRACED_KNOBS = (
    'optim.weight_decay', 'optim.learning_rate', 'optim.label_smoothing',
    'aug.crop_scale_min', 'aug.crop_scale_max', 'aug.crop_ratio_min', 'aug.crop_ratio_max',
    'aug.flip_prob', 'aug.color_strength',
    'aug.erase_prob', 'aug.erase_scale_min', 'aug.erase_scale_max', 'aug.erase_ratio_min',
    'aug.erase_ratio_max', 'aug.erase_value',
)
STRATEGIES = ('auto', 'unroll', 'vmap', 'chunked', 'sequential', 'shard', 'shard:unroll',
              'shard:vmap', 'shard:chunked')


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
  c.sweep.name = 'optim.weight_decay'  # dotted path of the swept field (one of TRACED_KNOBS)
  c.sweep['values'] = (0.0, 5e-4)  # V values

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 30
  c.train.batch_size = 128
  c.train.eval_batch_size = 500
  c.train.eval_every = 0  # evaluate on test every k epochs for curves (0: only at the end)
  c.train.strategy = 'auto'  # the model axis: auto, unroll, vmap, chunked, sequential, shard
  c.train.chunk_size = 4  # models per vmapped chunk for strategy 'chunked'
  c.train.loop = 'auto'  # 'scan': an epoch per compiled call; 'python': a step per call
  c.train.checkpoint_every = 0  # save WORKDIR/checkpoint every k epochs to resume (0: off)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 0.1  # peak, for batch_size
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4
  c.optim.decoupled_weight_decay = False  # False: L2 added to the gradient (PyTorch SGD)
  c.optim.decay_norm_and_bias = True  # False: no decay on BatchNorm scales and biases
  c.optim.warmup_epochs = 1.0
  c.optim.schedule = 'cosine'  # 'cosine' (after linear warmup) or 'constant'
  c.optim.label_smoothing = 0.0

  c.aug = ml_collections.ConfigDict()
  c.aug.pad_crop = 0  # CIFAR-style random crop with this zero padding (0 = off)
  c.aug.crop = False  # RandomResizedCrop back to the input size
  c.aug.crop_scale_min = 0.08
  c.aug.crop_scale_max = 1.0
  c.aug.crop_ratio_min = 3 / 4
  c.aug.crop_ratio_max = 4 / 3
  c.aug.flip = False  # random horizontal flip
  c.aug.flip_prob = 0.5
  c.aug.color_strength = 0.0  # ColorJitter(0.8s, 0.8s, 0.8s, 0.2s); 0 = off
  c.aug.erase_prob = 0.0  # RandomErasing probability; 0 = off
  c.aug.erase_scale_min = 0.02
  c.aug.erase_scale_max = 0.33
  c.aug.erase_ratio_min = 0.3
  c.aug.erase_ratio_max = 3.3
  c.aug.erase_value = 0.0  # in normalised units: 0 erases to the dataset mean

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
  config.data.planted_train_per_class = 100
  return config


def get_field(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def validate(config) -> None:
  """Raises ConfigError when the resolved config cannot run."""
  if config.sweep.name not in TRACED_KNOBS:
    raise ConfigError(f'sweep.name {config.sweep.name!r} cannot be swept inside one program; '
                      f'choose one of {", ".join(TRACED_KNOBS)}')
  values = tuple(config.sweep['values'])  # `.values` is ConfigDict's method
  if len(values) < 1:
    raise ConfigError('sweep.values is empty')
  if len(set(values)) != len(values):
    raise ConfigError(f'sweep.values has repeated values: {values}')
  if config.seeds < 1:
    raise ConfigError(f'seeds must be >= 1, got {config.seeds}')
  if config.train.strategy not in STRATEGIES:
    raise ConfigError(f'train.strategy {config.train.strategy!r}; choose one of '
                      f'{", ".join(STRATEGIES)}')
  for name in ('epochs', 'batch_size', 'eval_batch_size', 'chunk_size'):
    if config.train[name] < 1:
      raise ConfigError(f'train.{name} must be >= 1, got {config.train[name]}')
  if config.train.loop not in ('auto', 'scan', 'python'):
    raise ConfigError(f'train.loop {config.train.loop!r}; choose auto, scan or python')
  if config.data.input_mode not in ('auto', 'resident', 'streamed'):
    raise ConfigError(f'data.input_mode {config.data.input_mode!r}; choose auto, resident or '
                      'streamed')
  if config.data.workers < 0:
    raise ConfigError(f'data.workers must be >= 0, got {config.data.workers}')
  if config.train.checkpoint_every < 0:
    raise ConfigError(f'train.checkpoint_every must be >= 0 (0 = off), got '
                      f'{config.train.checkpoint_every}')
  if config.optim.schedule not in ('cosine', 'constant'):
    raise ConfigError(f'optim.schedule {config.optim.schedule!r}; choose cosine or constant')
  if config.model.dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'model.dtype {config.model.dtype!r}; choose float32 or bfloat16')
