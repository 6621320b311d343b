"""The model axis: how a per-model function runs over the M models of a sweep.

Strategies (config `train.strategy`), chosen by measurement (docs/benchmarks.md):
  vmap     one vmapped program; convs become grouped convs (slow on XLA:CPU)
  unroll   M independent copies of the per-model computation in one program
  chunked  vmapped chunks of `train.chunk_size` models, unrolled over chunks
  auto     unroll on CPU, vmap elsewhere
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from classbias_jax.errors import ConfigError

# ----------------------------------------------------------------------------------------
def resolve_strategy(strategy: str, backend: str | None = None) -> str:
  """'auto' -> 'unroll' on CPU (vmapped convs become slow grouped convs on XLA:CPU),
  'vmap' elsewhere; other names pass through."""
  if strategy != 'auto':
    return strategy
  return 'unroll' if (backend or jax.default_backend()) == 'cpu' else 'vmap'


def over_models(fn: Callable, strategy: str, chunk_size: int = 1) -> Callable:
  """Lifts fn(per_model, shared) to per_model pytrees with a leading axis [M].

  'vmap': one vmapped program (convs become grouped convs); 'unroll': the M models as M
  independent copies of the computation in one program; 'chunked': vmapped chunks of
  `chunk_size` models, unrolled over chunks.
  """
  if strategy == 'vmap':
    return jax.vmap(fn, in_axes=(0, None))
  if strategy not in ('unroll', 'chunked'):
    raise ConfigError(f'unknown model-axis strategy {strategy!r}')
  size = 1 if strategy == 'unroll' else chunk_size

  def lifted(per_model, shared):
    num_models = jax.tree.leaves(per_model)[0].shape[0]
    outs = []
    for start in range(0, num_models, size):
      part = jax.tree.map(lambda a: a[start:start + size], per_model)
      if strategy == 'unroll':
        one = fn(jax.tree.map(lambda a: a[0], part), shared)
        outs.append(jax.tree.map(lambda a: a[None], one))
      else:
        outs.append(jax.vmap(fn, in_axes=(0, None))(part, shared))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)

  return lifted
