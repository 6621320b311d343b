"""The plan of a run: everything fixed before training, built once from (config, dataset):
the design (design.py), the augmentations to compile, steps per epoch, channel statistics,
the model-axis strategy and the loop."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from classbias_jax import configs, knob_table
from classbias_jax.errors import ConfigError
from classbias_jax.train import arms, model_axis, prune
from classbias_jax.train.design import Sweep, knob_arrays, model_keys, sweep_from_config


# The stages whose ops augment.preprocess runs (the 'step' stage's knobs the step reads).
KERNEL_STAGES = ('pixels', 'normalised', 'targets', 'batch')


def augment_ops(config, knobs: dict[str, np.ndarray]) -> tuple[str, ...]:
  """Static choice of the ops to compile, of every stage but 'step', in stage then table
  order. An op is compiled when any model has one of its knobs away from the knob's off
  value (a traced knob per model, a static one in the config)."""
  def on(op: str) -> bool:
    for dotted, knob in knob_table.KNOBS.items():
      if knob.op != op or knob.off is None:
        continue
      value = (knobs[knob_table.short_name(dotted)] if knob.traced
               else knob_table.get_field(config, dotted))
      if np.any(np.asarray(value) != knob.off):
        return True
    return False
  return tuple(op for stage in KERNEL_STAGES for op in knob_table.ops_of(stage) if on(op))


@dataclasses.dataclass(frozen=True)
class Plan:
  """What every part of a run reads: built once by `build`, never changed."""
  config: Any  # the study's ConfigDict
  sweep: Sweep
  knobs: dict[str, np.ndarray]  # short name -> float32 [M] or [M, C]
  ops: tuple[str, ...]  # the ops augment.preprocess compiles, of every stage (augment_ops)
  steps_per_epoch: int
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: np.ndarray  # float32 [C] channel statistics of the training images, in [0, 1]
  std: np.ndarray
  strategy: str  # model_axis strategy, resolved
  loop: str  # 'python' or 'scan', resolved
  class_weights: bool = False  # some model has per-class loss weights (class_weights.py)
  arms: dict | None = None  # a fix study's arms and their tables (arms.py)
  prune: bool = False  # some model prunes its weights (prune.py)

  @property
  def num_models(self) -> int:
    return self.sweep.num_models

  def keys(self) -> dict[str, jax.Array]:
    return model_keys(self.sweep)

  def resolved(self) -> dict[str, Any]:
    """What the plan decided, for config.json."""
    out = {'strategy': self.strategy, 'loop': self.loop, 'augment_ops': list(self.ops),
           'num_models': self.num_models,
           'seeds': self.sweep.seeds.tolist(), 'steps_per_epoch': self.steps_per_epoch,
           'backend': jax.default_backend(), 'class_weights': self.class_weights}
    if self.prune:
      ramp = prune.schedule(self.config.prune, self.steps_per_epoch)  # in steps done
      out['prune'] = {'start_step': ramp.start, 'end_step': ramp.end, 'every_steps': ramp.every}
    return dict(out, fix=self.arms) if self.arms else out


def build_plan(config, *, num_train: int, num_classes: int, image_shape, mean, std,
          strategy: str | None = None) -> Plan:
  """The plan for `config` on a dataset of this shape. strategy: an already resolved
  model-axis strategy (train.strategy 'auto' is measured by the caller); None resolves
  train.strategy here."""
  sweep = sweep_from_config(config)
  batch_size = config.train.batch_size
  if num_train < batch_size:
    raise ConfigError(f'train.batch_size {batch_size} exceeds the {num_train} training images')
  if sweep.name == configs.ARM_SWEEP:
    sweep, knobs, arms_info = arms.plan(config, sweep, num_classes)
  else:
    knobs, arms_info = knob_arrays(config, sweep, num_classes), None
  ops = augment_ops(config, knobs)
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
  return Plan(config, sweep, knobs, ops, num_train // batch_size, tuple(image_shape),
              num_classes, np.asarray(mean, np.float32), np.asarray(std, np.float32),
              strategy, loop, bool(np.any(knobs['class_weight_rate'] != 0)), arms_info,
              prune=bool(np.any(knobs['sparsity'] != 0)))
