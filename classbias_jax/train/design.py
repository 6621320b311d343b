"""The study's design: which models a sweep trains and what makes them differ.

Model m is (value index v, seed index s) with m = v * S + s. Every traced knob of
knob_table.KNOBS gets an array [M] (the config's value, or the swept values for the swept
knob), so one compiled program serves the whole sweep. Seeds are common random numbers:
model (v, s) takes its init, data order and augmentation draws from seed s alone.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax import knob_table
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
  for dotted in knob_table.traced_knobs():
    short = knob_table.short_name(dotted)
    if dotted == sweep.name:
      out[short] = sweep.values[sweep.value_index].astype(np.float32)
    else:
      out[short] = np.full(sweep.num_models, knob_table.get_field(config, dotted), np.float32)
  for short, table in config.get('class_knobs', {}).items():
    table = np.asarray(table, np.float32)
    if num_classes is not None and table.shape != (num_classes,):
      raise ConfigError(f'class_knobs.{short} has {table.size} values for {num_classes} classes')
    out[short] = np.where(np.isnan(table)[None, :], out[short][:, None], table[None, :])
  return out


def model_keys(sweep: Sweep) -> dict[str, jax.Array]:
  """Per-model keys [M] for init, data order and augmentation, from the seed alone."""
  roots = jax.vmap(jax.random.key)(jnp.asarray(sweep.seeds[sweep.seed_index], jnp.uint32))
  fold = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(roots)
  return {'init': fold(0), 'data': fold(1), 'aug': fold(2)}
