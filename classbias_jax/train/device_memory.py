"""A device out of memory as one line: which models, batch and M, and which knob to lower.

XLA reports an allocation it cannot make as a runtime error whose text starts with
RESOURCE_EXHAUSTED (jax.errors.JaxRuntimeError, jaxlib's XlaRuntimeError before it, both
RuntimeErrors), raised where the program runs or, dispatch being asynchronous, where its
result is first read. `guard(plan, phase)` turns it into errors.DeviceOutOfMemory.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from classbias_jax.errors import DeviceOutOfMemory

MARKERS = ('resource_exhausted', 'out of memory')


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is XLA's report of an allocation the device could not make."""
  return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in MARKERS)


def _lower(plan, phase: str, input_mode: str) -> list[str]:
  """What shrinks what one call holds on the device, the simplest first."""
  train, strategy = plan.config.train, plan.strategy
  batch = 'eval_batch_size' if phase == 'evaluating' else 'batch_size'
  out = [f'lower train.{batch} (now {train[batch]})']
  if strategy.endswith('chunked'):
    out.append(f'lower train.chunk_size (now {train.chunk_size})')
  elif 'sequential' not in strategy and plan.num_models > 1:  # all M models at once
    out.append('run fewer models at once (train.strategy=chunked with a small '
               'train.chunk_size, or sequential)')
  if input_mode == 'resident':
    out.append('keep the images off the device (data.input_mode=streamed)')
  out.append('train a smaller model (model.width, model.name)')
  return out


def message(plan, phase: str, input_mode: str) -> str:
  """One line: what ran out of memory and what to lower."""
  config = plan.config
  return (f'the device ran out of memory {phase} {plan.num_models} models (M) of '
          f'{config.model.name} (width {config.model.width:g}, {config.model.dtype}) at '
          f'train.batch_size {config.train.batch_size}, strategy {plan.strategy}: '
          + ', or '.join(_lower(plan, phase, input_mode)))


@contextlib.contextmanager
def guard(plan, phase: str, input_mode: str) -> Iterator[None]:
  """Turns a device out of memory inside the block into a DeviceOutOfMemory line.
  phase: 'training' or 'evaluating', as the line says it; input_mode: the run's."""
  try:
    yield
  except RuntimeError as e:
    if not is_out_of_memory(e):
      raise
    raise DeviceOutOfMemory(message(plan, phase, input_mode)) from None
