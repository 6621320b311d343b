"""The plan of a run: everything fixed before training, built once from (config, dataset).

Model m is (value index v, seed index s) with m = v * S + s. Every traced knob of
configs.KNOBS gets an array [M] (the config's value, or the swept values for the swept
knob), so one compiled program serves the whole sweep. Seeds are common random numbers:
model (v, s) takes its init, data order and augmentation draws from seed s alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax import augment, configs, model_axis
from classbias_jax.errors import ConfigError



@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str  # dotted config path of the swept knob
  values: np.ndarray  # float64 [V]
  seeds: np.ndarray  # int64 [S] seed values

  @property
  def num_models(self) -> int:
    return len(self.values) * len(self.seeds)

  @property
  def value_index(self) -> np.ndarray:
    """int32 [M]: the sweep value index of each model."""
    return np.repeat(np.arange(len(self.values)), len(self.seeds)).astype(np.int32)

  @property
  def seed_index(self) -> np.ndarray:
    """int32 [M]: the seed index of each model."""
    return np.tile(np.arange(len(self.seeds)), len(self.values)).astype(np.int32)

  def unflatten(self, x: np.ndarray) -> np.ndarray:
    """[M, ...] -> [V, S, ...]."""
    return np.asarray(x).reshape(len(self.values), len(self.seeds), *np.shape(x)[1:])


def sweep_from_config(config) -> Sweep:
  values = np.asarray(config.sweep['values'], np.float64)
  seeds = config.seed + np.arange(config.seeds, dtype=np.int64)
  return Sweep(config.sweep.name, values, seeds)


def knob_arrays(config, sweep: Sweep, num_classes: int | None = None) -> dict[str, np.ndarray]:
  """Per-model values of every traced knob: short name -> float32 [M].

  A knob in `config.class_knobs` (short name -> C values, NaN = the model's own value)
  becomes a table [M, C], looked up by each image's label on device: class-conditional
  augmentation. Other knobs stay [M] and cost nothing extra.
  """
  out = {}
  for dotted in configs.traced_knobs():
    short = configs.short_name(dotted)
    if dotted == sweep.name:
      out[short] = sweep.values[sweep.value_index].astype(np.float32)
    else:
      out[short] = np.full(sweep.num_models, configs.get_field(config, dotted), np.float32)
  for short, table in config.get('class_knobs', {}).items():
    table = np.asarray(table, np.float32)
    if num_classes is not None and table.shape != (num_classes,):
      raise ConfigError(f'class_knobs.{short} has {table.size} values for {num_classes} classes')
    out[short] = np.where(np.isnan(table)[None, :], out[short][:, None], table[None, :])
  return out


def augment_ops(config, knobs: dict[str, np.ndarray]) -> tuple[tuple[str, ...], bool]:
  """Static choice of the augmentations to compile: (ops before normalisation, erase?).
  An op is compiled when any model has one of its knobs away from the knob's off value."""
  def on(op: str) -> bool:
    for dotted, knob in configs.KNOBS.items():
      if knob.op != op or knob.off is None:
        continue
      value = (knobs[configs.short_name(dotted)] if knob.traced
               else configs.get_field(config, dotted))
      if np.any(np.asarray(value) != knob.off):
        return True
    return False
  return tuple(op for op in augment.OPS if on(op)), on('erase')


def model_keys(sweep: Sweep) -> dict[str, jax.Array]:
  """Per-model keys [M] for init, data order and augmentation, from the seed alone."""
  roots = jax.vmap(jax.random.key)(jnp.asarray(sweep.seeds[sweep.seed_index], jnp.uint32))
  fold = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(roots)
  return {'init': fold(0), 'data': fold(1), 'aug': fold(2)}


@dataclasses.dataclass(frozen=True)
class Plan:
  """What every part of a run reads: built once by `build`, never changed."""
  config: Any  # the study's ConfigDict
  sweep: Sweep
  knobs: dict[str, np.ndarray]  # short name -> float32 [M] or [M, C]
  ops: tuple[str, ...]  # augmentations before normalisation (augment.OPS)
  erase: bool  # RandomErasing after normalisation
  steps_per_epoch: int
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: np.ndarray  # float32 [C] channel statistics of the training images, in [0, 1]
  std: np.ndarray
  strategy: str  # model_axis strategy, resolved
  loop: str  # 'python' or 'scan', resolved
  class_weights: bool = False  # some model has per-class loss weights (class_weights.py)
  arms: dict | None = None  # a fix study's arms and their tables (arms.py)

  @property
  def num_models(self) -> int:
    return self.sweep.num_models

  def keys(self) -> dict[str, jax.Array]:
    return model_keys(self.sweep)

  def resolved(self) -> dict[str, Any]:
    """What the plan decided, for config.json."""
    out = {'strategy': self.strategy, 'loop': self.loop, 'augment_ops': list(self.ops),
           'erase': self.erase, 'num_models': self.num_models,
           'seeds': self.sweep.seeds.tolist(), 'steps_per_epoch': self.steps_per_epoch,
           'backend': jax.default_backend(), 'class_weights': self.class_weights}
    return dict(out, fix=self.arms) if self.arms else out


def build(config, *, num_train: int, num_classes: int, image_shape, mean, std,
          strategy: str | None = None) -> Plan:
  """The plan for `config` on a dataset of this shape. strategy: an already resolved
  model-axis strategy (train.strategy 'auto' is measured by the caller); None resolves
  train.strategy here."""
  sweep = sweep_from_config(config)
  batch_size = config.train.batch_size
  if num_train < batch_size:
    raise ConfigError(f'train.batch_size {batch_size} exceeds the {num_train} training images')
  if sweep.name == configs.ARM_SWEEP:
    from classbias_jax import arms
    sweep, knobs, arms_info = arms.plan(config, sweep, num_classes)
  else:
    knobs, arms_info = knob_arrays(config, sweep, num_classes), None
  ops, erase = augment_ops(config, knobs)
  if strategy is None:
    if config.train.strategy == 'auto':
      raise ConfigError("train.strategy 'auto' must be measured before the plan is built")
    strategy = model_axis.resolve_strategy(
        config.train.strategy, sweep.num_models, config.train.loop, batch_size=batch_size,
        mesh=(config.train.mesh_models, config.train.mesh_data))
  loop = model_axis.resolve_loop(config.train.loop, strategy=strategy)
  if loop == 'scan' and model_axis.is_sequential(strategy):
    raise ConfigError("train.strategy 'sequential' calls a compiled program per model and "
                      "step: it needs train.loop 'python'")
  return Plan(config, sweep, knobs, ops, erase, num_train // batch_size, tuple(image_shape),
              num_classes, np.asarray(mean, np.float32), np.asarray(std, np.float32),
              strategy, loop, bool(np.any(knobs['class_weight_rate'] != 0)), arms_info)
