"""`train.strategy 'auto'`: measure the model-axis strategies on this machine and cache the
fastest per machine and workload. Opt-in: the default is model_axis.default_strategy, a
fixed rule; config.json records what ran either way.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from classbias_jax.train import design, model_axis
from classbias_jax.train.model_axis import SEQUENTIAL, mesh_size
from classbias_jax.train.plan import augment_ops
from classbias_jax.tuning import hostmem, prepared

ENV_CACHE_DIR = 'CLASSBIAS_CACHE_DIR'  # default ~/.cache/classbias_jax
# 'auto' keeps 'sequential' unless another candidate's measured step is this much faster:
# it compiles one model, holds one model's activations, and runs exactly the work of the
# models one after another, while auto's few timed calls can differ from a long run by
# more than a few percent (docs/benchmarks.md).
SEQUENTIAL_MARGIN = 0.10


def candidates(backend: str, num_models: int, num_devices: int,
               loop: str = 'auto') -> list[str]:
  """Strategies `auto` measures, the fallback rule's choice first (it sets the bar).
  'sequential' (which runs a step per call, train.loop 'auto' resolving to 'python' for
  it) on every backend unless train.loop is 'scan', for M > 1 (M = 1: it is 'unroll')."""
  if backend == 'cpu':
    out = ['unroll', 'chunked', 'vmap']
  else:
    # Unrolling many models makes programs (and compiles) M times larger on accelerators.
    out = ['vmap', 'chunked'] + (['unroll'] if num_models <= 16 else [])
  if mesh_size(num_models, num_devices) > 1:
    out = ['shard:' + s if s != 'unroll' else 'shard' for s in out[:2]] + out
  if loop != 'scan' and num_models > 1:
    out.append(SEQUENTIAL)
  first = model_axis.default_strategy(backend, num_models, num_devices, loop)
  return [first] + [s for s in out if s != first]


def machine_signature() -> dict[str, Any]:
  """What makes timings comparable: backend, device kind and count, CPU model and cores,
  and on CPU the host allocator's mode (hostmem.py)."""
  devices = jax.devices()
  signature = {'backend': devices[0].platform, 'device_kind': devices[0].device_kind,
               'devices': len(devices), 'cpu': cpu_model(), 'cores': os.cpu_count(),
               'jax': jax.__version__}
  if signature['backend'] == 'cpu':
    signature['malloc'] = hostmem.in_effect()
  return signature


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or platform.machine()


def cache_path() -> str:
  root = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser('~'), '.cache',
                                                        'classbias_jax')
  return os.path.join(root, 'strategies.json')


def cache_key(workload: dict[str, Any]) -> str:
  """One string for machine + workload (model, batch, M, dtype, ...), keys sorted."""
  return json.dumps({**machine_signature(), **workload}, sort_keys=True)


def load_cache() -> dict[str, Any]:
  try:
    with open(cache_path()) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def save_cache_entry(key: str, entry: dict[str, Any]) -> None:
  """Adds one entry; written to a temporary file and renamed, so readers never see half."""
  cache = load_cache()
  cache[key] = entry
  path = cache_path()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(cache, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def resolve_auto(num_models: int, workload: dict[str, Any],
                 measure: Callable[[str, float | None], float] | None,
                 loop: str = 'auto') -> str:
  """The strategy 'auto' runs: the cached choice for this machine and `workload` (a dict
  naming model, batch, dtype, ...; M is added), else the fastest candidate by
  `measure(strategy, give_up_s) -> seconds per step` (`pick`; cached with all timings),
  else (measure None: a run too short to be worth measuring) the rule."""
  backend = jax.default_backend()
  key = cache_key({**workload, 'models': num_models})
  cached = load_cache().get(key)
  if cached:
    return cached['strategy']
  if measure is None:
    return model_axis.default_strategy(backend, num_models, jax.device_count(), loop)
  timings = measure_candidates(candidates(backend, num_models, jax.device_count(), loop),
                               measure)
  best = pick(timings)
  save_cache_entry(key, {'strategy': best, 'step_s': timings,
                         'measured': time.strftime('%Y-%m-%d %H:%M:%S')})
  return best


def pick(timings: dict[str, float]) -> str:
  """The fastest strategy of `timings` (seconds per step), or 'sequential' when it is
  within SEQUENTIAL_MARGIN of the fastest."""
  best = min(timings, key=timings.get)
  if timings.get(SEQUENTIAL, math.inf) <= (1 + SEQUENTIAL_MARGIN) * timings[best]:
    return SEQUENTIAL
  return best


def measure_candidates(names: Sequence[str], measure: Callable[[str, float | None], float],
                       give_up_factor: float = 3.0) -> dict[str, float]:
  """Seconds per step of each candidate; one slower than give_up_factor x the best so far
  is stopped after its first call (vmap on XLA:CPU can take minutes per step)."""
  timings: dict[str, float] = {}
  for name in names:
    bar = give_up_factor * min(timings.values()) if timings else None
    t0 = time.perf_counter()
    timings[name] = measure(name, bar)
    print(f'auto: {name} {timings[name]:.4g} s per step (measured in '
          f'{time.perf_counter() - t0:.0f} s, compile included)', file=sys.stderr, flush=True)
  return timings


def time_calls(fn: Callable[[], Any], calls: int, give_up_s: float | None = None) -> list[float]:
  """Wall seconds of each of `calls` calls of fn (which must block until done); stops
  early once one call takes longer than give_up_s."""
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    if give_up_s is not None and times[-1] > give_up_s:
      break
  return times


def median(xs: Sequence[float]) -> float:
  return float(np.median(np.asarray(xs))) if len(xs) else math.inf


# 'auto' measures only for runs this long: the measurement (a compile and a few steps of
# each candidate) then costs a few percent of the run at most.
MIN_STEPS_TO_MEASURE = 2000


def choose(config, model, *, image_shape, num_classes: int, total_steps: int | None = None,
           measure_steps: int = 2) -> str:
  """train.strategy 'auto' resolved: cached per machine and workload, else measured here (a
  few steps of each candidate on stand-in data of the real shapes) when the run has at
  least MIN_STEPS_TO_MEASURE steps (or total_steps is None), else the rule."""
  sweep = design.sweep_from_config(config)
  ops = augment_ops(config, design.knob_arrays(config, sweep, num_classes))
  loop = config.train.loop
  workload = {'model': config.model.name, 'width': config.model.width,
              'dtype': config.model.dtype, 'batch': config.train.batch_size,
              'image_shape': list(image_shape), 'num_classes': num_classes,
              'augment': list(ops), 'chunk_size': config.train.chunk_size,
              'loop': loop}

  def measure(strategy: str, give_up_s: float | None) -> float:
    # As the run will call it; the first call (allocation, warm-up) is not timed.
    step = prepared.prepared_step(model, config, image_shape=image_shape,
                                  num_classes=num_classes, strategy=strategy,
                                  loop=model_axis.resolve_loop(loop, strategy=strategy),
                                  count_flops=False)
    step.run()
    bar = None if give_up_s is None else give_up_s * step.steps_per_call
    return median(time_calls(step.run, measure_steps, bar)) / step.steps_per_call

  worth_it = total_steps is None or total_steps >= MIN_STEPS_TO_MEASURE
  return resolve_auto(sweep.num_models, workload, measure if worth_it else None, loop)
