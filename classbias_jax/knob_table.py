"""The KNOBS table: every config field that changes what each model trains with (its
default, range, off value, op, stage, pairing, axis scale, per-class use), the helpers that
read it, and the checks of a config's knob values against it (ranges and low/high pairs).
configs.py re-exports KNOBS, Knob, STAGES and the common helpers under their old names."""
from __future__ import annotations

import dataclasses
import math

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


def get_field(config, dotted: str):
  """The value of the dotted field `dotted` (e.g. 'aug.crop_scale_min') of a config."""
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def check_knobs(config) -> None:
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
