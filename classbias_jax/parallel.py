"""The model axis: how a per-model function runs over the M models of a sweep.

Strategies (config `train.strategy`), chosen by measurement (docs/benchmarks.md):
  vmap          one vmapped program; convs become grouped convs (slow on XLA:CPU)
  unroll        M independent copies of the per-model computation in one program
  chunked       vmapped chunks of `train.chunk_size` models, unrolled over chunks
  shard         the model axis split over a 1-D mesh of devices ('models'), each device
                running its M / D models unrolled; 'shard:vmap' and 'shard:chunked' pick
                the per-device strategy
  sequential    the models one after another: a compiled one-model program called M times
                from the host (a step per call: not with train.loop 'scan'); the work of
                M separate runs, compiled once, whatever the compiler does with M-model
                programs
  auto          the fastest of the candidates for this backend, device, model, batch and
                M, measured once per machine and cached (see `resolve_strategy`);
                'sequential' unless another is SEQUENTIAL_MARGIN faster

Under 'shard' the per-model leaves live sharded over the mesh (`put_models`) and the
shared data replicated on every device (`put_shared`), so no step moves them.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from classbias_jax import hostmem
from classbias_jax.errors import ConfigError

MODEL_AXIS = 'models'
INNER = ('unroll', 'vmap', 'chunked')
SEQUENTIAL = 'sequential'
# How `auto` decides (docs/benchmarks.md): 'measure' (default) the cached choice, else a
# measurement; 'cache' the cached choice, else the fallback rule; 'rule' the rule alone.
ENV_AUTO = 'CLASSBIAS_AUTO'
ENV_CACHE_DIR = 'CLASSBIAS_CACHE_DIR'  # default ~/.cache/classbias_jax
# 'auto' keeps 'sequential' unless another candidate's measured step is this much faster:
# it compiles one model (6-8 s against 55 s for 8 unrolled ResNet-20s), holds one model's
# activations, and runs exactly the work of the models one after another, while auto's
# few timed calls can differ from a long run by more than a few percent (CPU, ResNet-20
# M=8: unroll 2-3% faster in auto's calls and no faster in the interleaved benchmark, or
# 15% faster in auto's calls and 4-6% in the benchmark; docs/benchmarks.md).
SEQUENTIAL_MARGIN = 0.10


# ----------------------------------------------------------------------------------------
# Strategies.
# ----------------------------------------------------------------------------------------
def split_strategy(strategy: str) -> tuple[bool, str]:
  """'shard:vmap' -> (True, 'vmap'); 'shard' -> (True, 'unroll'); 'vmap' -> (False, 'vmap')."""
  if strategy == SEQUENTIAL:
    return False, SEQUENTIAL
  sharded, _, inner = strategy.partition(':') if strategy.startswith('shard') else (
      '', '', strategy)
  inner = inner or 'unroll'
  if (sharded and sharded != 'shard') or inner not in INNER:
    raise ConfigError(f'unknown model-axis strategy {strategy!r}; choose auto, '
                      f'{", ".join(INNER)}, {SEQUENTIAL}, shard or shard:<{"|".join(INNER)}>')
  return bool(sharded), inner


def is_sequential(strategy: str) -> bool:
  return strategy == SEQUENTIAL


def jit(fn: Callable, strategy: str, **kwargs) -> Callable:
  """jax.jit(fn, **kwargs) for the strategies that run the models in one program; fn as
  it is under 'sequential', whose over_models already calls a compiled program per model
  (jitting it would inline those calls into one M-model program)."""
  return fn if is_sequential(strategy) else jax.jit(fn, **kwargs)


def over_models(fn: Callable, strategy: str, chunk_size: int = 1,
                carry: bool = False) -> Callable:
  """Lifts fn(per_model, shared) to per_model pytrees with a leading axis [M].

  'vmap': one vmapped program (convs become grouped convs); 'unroll': the M models as M
  independent copies of the computation in one program; 'chunked': vmapped chunks of
  `chunk_size` models, unrolled over chunks; 'shard[:inner]': the model axis split over
  the devices of `model_mesh(M)`, each device running its models with `inner`;
  'sequential': a `Sequential` (called from the host, not from inside a jitted function);
  carry: fn's first input and output are the state, updated in place (Sequential's carry;
  the other strategies donate it through jax.jit).
  """
  sharded, inner = split_strategy(strategy)
  if inner == SEQUENTIAL:
    return Sequential(fn, carry)
  local = _over_models_local(fn, inner, chunk_size)
  if not sharded:
    return local

  def lifted(per_model, shared):
    mesh = model_mesh(jax.tree.leaves(per_model)[0].shape[0])
    specs = (PartitionSpec(MODEL_AXIS), PartitionSpec())
    return jax.shard_map(local, mesh=mesh, in_specs=specs,
                         out_specs=PartitionSpec(MODEL_AXIS))(per_model, shared)

  return lifted


def _over_models_local(fn: Callable, strategy: str, chunk_size: int) -> Callable:
  if strategy == 'vmap':
    return jax.vmap(fn, in_axes=(0, None))
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


class Sequential:
  """fn lifted to the model axis by running it one model at a time from the host:
  `one(carry, per_model, shared, i)` is fn on model i's slice of the per-model leaves,
  compiled once (i is traced) and called M times, dispatched asynchronously (the host
  queues model i + 1 while model i runs). With `carry` (the train step: fn's first input
  and first output are the model state) the state [M, ...] is donated to each call and
  model i's new state written into it in place, so a step allocates no new state; the
  other outputs, one per model, are stacked on device by a second small program.
  """

  def __init__(self, fn: Callable, carry: bool = False):
    self.fn, self.carry = fn, carry
    self.one = jax.jit(self._one, donate_argnums=(0,) if carry else ())
    self.compiled = None  # set by compile(): the calls use it (same shapes as compiled)
    self._stack = jax.jit(lambda outs: jax.tree.map(lambda *xs: jnp.stack(xs), *outs))

  def _one(self, carry, per_model, shared, index):
    take = lambda tree: jax.tree.map(lambda a: a[index], tree)
    if not self.carry:
      return self.fn(take(per_model), shared)
    out = self.fn((take(carry),) + take(per_model), shared)
    put = lambda a, new: jax.lax.dynamic_update_index_in_dim(a, new, index, 0)
    return (jax.tree.map(put, carry, out[0]),) + tuple(out[1:])

  def _split(self, per_model):
    return (per_model[0], tuple(per_model[1:])) if self.carry else (None, per_model)

  def compile(self, per_model, shared):
    """Compiles the one-model program for these shapes ahead of time and returns it."""
    self.compiled = self.one.lower(*self._split(per_model), shared, np.int32(0)).compile()
    return self.compiled

  def __call__(self, per_model, shared):
    one = self.compiled or self.one
    carry, rest = self._split(per_model)
    num_models = jax.tree.leaves(per_model)[0].shape[0]
    outs = []
    for i in range(num_models):
      out = one(carry, rest, shared, np.int32(i))
      if self.carry:
        carry, out = out[0], out[1:]
      outs.append(out)
    stacked = self._stack(outs)
    return (carry,) + tuple(stacked) if self.carry else stacked


# ----------------------------------------------------------------------------------------
# Mesh and placement.
# ----------------------------------------------------------------------------------------
def model_mesh(num_models: int) -> Mesh:
  """1-D mesh ('models') over the most devices that divide M, so every device holds the
  same number of models (M = 6 on 4 devices uses 3)."""
  devices = jax.devices()
  return Mesh(np.asarray(devices[:mesh_size(num_models, len(devices))]), (MODEL_AXIS,))


def mesh_size(num_models: int, num_devices: int) -> int:
  """The most devices, at most num_devices, that divide num_models."""
  return max(d for d in range(1, num_devices + 1) if num_models % d == 0)


def put_models(tree, strategy: str):
  """Places per-model leaves [M, ...]: split over the mesh under 'shard', else unchanged."""
  if not split_strategy(strategy)[0]:
    return tree
  mesh = model_mesh(jax.tree.leaves(tree)[0].shape[0])
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(MODEL_AXIS)))


def put_shared(tree, strategy: str, num_models: int):
  """Places data every model reads (images, labels): a copy on every device of the mesh
  under 'shard' (else each step would broadcast them), default placement otherwise."""
  if not split_strategy(strategy)[0]:
    return jax.device_put(tree)
  return jax.device_put(tree, NamedSharding(model_mesh(num_models), PartitionSpec()))


# ----------------------------------------------------------------------------------------
# auto: measured once per machine, cached.
# ----------------------------------------------------------------------------------------
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
  first = fallback_strategy(backend, num_models, num_devices, loop)
  return [first] + [s for s in out if s != first]


def fallback_strategy(backend: str, num_models: int, num_devices: int,
                      loop: str = 'auto') -> str:
  """The choice without a measurement. CPU: sharded over the devices when there are
  several that M divides into; else the models one after another ('sequential', unless
  train.loop is 'scan'): on XLA:CPU one model's step already keeps the cores busy, an M-model
  program ran no faster (0.88-1.04x, docs/benchmarks.md) and compiles M times longer, and
  vmapped convolutions become grouped ones, several times slower. GPU/TPU: vmapped,
  sharded when several devices divide M."""
  if mesh_size(num_models, num_devices) > 1:
    return 'shard' if backend == 'cpu' else 'shard:vmap'
  if backend != 'cpu':
    return 'vmap'
  return SEQUENTIAL if loop != 'scan' and num_models > 1 else 'unroll'


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


def resolve_strategy(strategy: str, backend: str | None = None, *, num_models: int = 1,
                     workload: dict[str, Any] | None = None,
                     measure: Callable[[str, float | None], float] | None = None,
                     loop: str = 'auto') -> str:
  """The strategy to run: names other than 'auto' pass through.

  'auto': the cached choice for this machine and `workload` (a dict naming model, batch,
  dtype, ... ; M is added), else the fastest candidate by `measure(strategy, give_up_s)
  -> seconds per step` (`pick`; cached with all timings), else `fallback_strategy`. loop:
  config train.loop ('sequential' is no candidate under 'scan').
  $CLASSBIAS_AUTO = 'cache' never measures; 'rule' also ignores the cache.
  """
  if strategy != 'auto':
    split_strategy(strategy)
    return strategy
  backend = backend or jax.default_backend()
  num_devices = jax.device_count()
  mode = os.environ.get(ENV_AUTO, 'measure')
  if mode not in ('measure', 'cache', 'rule'):
    raise ConfigError(f'${ENV_AUTO}={mode!r}; choose measure, cache or rule')
  if workload is None or mode == 'rule':
    return fallback_strategy(backend, num_models, num_devices, loop)
  key = cache_key({**workload, 'models': num_models})
  cached = load_cache().get(key)
  if cached:
    return cached['strategy']
  if measure is None or mode == 'cache':
    return fallback_strategy(backend, num_models, num_devices, loop)
  timings = measure_candidates(candidates(backend, num_models, num_devices, loop), measure)
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
