"""The model axis: how a one-model function runs over the M models of a sweep, and where
per-model state and shared data live.

Strategies (config `train.strategy`; 'rule' picks one per backend by `default_strategy`,
written from the measurements in docs/benchmarks.md; 'auto' measures, tuning/strategy.py):
  vmap          one vmapped program; convs become grouped convs (slow on XLA:CPU)
  unroll        M independent copies of the per-model computation in one program
  chunked       vmapped chunks of `train.chunk_size` models, unrolled over chunks
  map           `lax.map` over the models: one model's computation in a loop inside one
                program (the models one after another without leaving the device)
  shard         the model axis split over a 1-D mesh of devices ('models'), each device
                running its M / D models unrolled; 'shard:vmap' and 'shard:chunked' pick
                the per-device strategy
  mesh:AxB      a 2-D device mesh: the M models spread over A devices ('models'), each
                model's batch over B devices ('data'); the models vmapped, the program
                partitioned by the compiler (GSPMD), so BatchNorm's statistics, the loss
                and the gradients are means over each model's whole batch. 'mesh' alone
                picks A and B from the devices, M and the batch size (`mesh_shape`)
  sequential    the models one after another: a compiled one-model program called M times
                from the host (a step per call: not with train.loop 'scan'); the work of
                M separate runs, compiled once, whatever the compiler does with M-model
                programs

Under 'shard' the per-model leaves live sharded over the mesh (`put_models`) and the
shared data replicated on every device (`put_shared`), so no step moves them.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from classbias_jax.errors import ConfigError

MODEL_AXIS = 'models'
DATA_AXIS = 'data'
MESH = 'mesh'
INNER = ('unroll', 'vmap', 'chunked', 'map')
SEQUENTIAL = 'sequential'


# ----------------------------------------------------------------------------------------
# Strategies.
# ----------------------------------------------------------------------------------------
def split_strategy(strategy: str) -> tuple[bool, str]:
  """'shard:vmap' -> (True, 'vmap'); 'shard' -> (True, 'unroll'); 'vmap' -> (False, 'vmap');
  'mesh:2x4' -> (True, 'mesh')."""
  if strategy == SEQUENTIAL:
    return False, SEQUENTIAL
  if is_mesh(strategy):
    parse_mesh(strategy)
    return True, MESH
  sharded, _, inner = strategy.partition(':') if strategy.startswith('shard') else (
      '', '', strategy)
  inner = inner or 'unroll'
  if (sharded and sharded != 'shard') or inner not in INNER:
    raise ConfigError(f'unknown model-axis strategy {strategy!r}; choose auto, '
                      f'{", ".join(INNER)}, {SEQUENTIAL}, shard or shard:<{"|".join(INNER)}>')
  return bool(sharded), inner


def is_sequential(strategy: str) -> bool:
  return strategy == SEQUENTIAL


def is_mesh(strategy: str) -> bool:
  return strategy == MESH or strategy.startswith(MESH + ':')


def parse_mesh(strategy: str) -> tuple[int, int]:
  """'mesh:2x4' -> (2, 4): devices on the model axis and on the data axis."""
  try:
    models, data = (int(n) for n in strategy.split(':', 1)[1].split('x'))
  except (IndexError, ValueError):
    raise ConfigError(f'train.strategy {strategy!r}: a mesh is mesh:<models>x<data>, e.g. '
                      'mesh:2x4') from None
  if models < 1 or data < 1:
    raise ConfigError(f'train.strategy {strategy!r}: axis sizes must be >= 1')
  return models, data


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
  `chunk_size` models, unrolled over chunks; 'map': `lax.map`, a loop over the models
  inside the program; 'shard[:inner]': the model axis split over
  the devices of `model_mesh(M)`, each device running its models with `inner`;
  'sequential': a `Sequential` (called from the host, not from inside a jitted function);
  carry: fn's first input and output are the state, updated in place (Sequential's carry;
  the other strategies donate it through jax.jit).
  """
  sharded, inner = split_strategy(strategy)
  if inner == SEQUENTIAL:
    return Sequential(fn, carry)
  if inner == MESH:  # the vmapped model axis laid along the mesh's model axis
    return jax.vmap(fn, in_axes=(0, None), spmd_axis_name=MODEL_AXIS)
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
  if strategy == 'map':
    return lambda per_model, shared: jax.lax.map(lambda one: fn(one, shared), per_model)
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


def mesh_shape(num_models: int, batch_size: int, num_devices: int, models: int = 0,
               data: int = 0) -> tuple[int, int]:
  """(model axis, data axis) sizes of a 2-D mesh; 0 = chosen. The choice uses the most
  devices it can, with model-axis sizes that divide M and data-axis sizes that divide the
  batch, and of equal uses the one with more devices on the model axis (models need no
  communication). A size that M or the batch cannot divide, or more devices than there
  are, is a one-line error."""
  if not (models and data):
    fits = lambda m: [d for d in range(1, num_devices // m + 1) if batch_size % d == 0]
    allowed = lambda m: ((models or m) == m and num_models % m == 0
                         and (not data or m * data <= num_devices))
    options = [(m, data or max(fits(m))) for m in range(1, num_devices + 1) if allowed(m)]
    if options:
      models, data = max(options, key=lambda md: (md[0] * md[1], md[0]))
    else:
      models, data = models or 1, data or 1
  if models * data > num_devices:
    raise ConfigError(f'mesh {models}x{data} needs {models * data} devices; there are '
                      f'{num_devices}')
  if num_models % models:
    raise ConfigError(f'the model axis ({models} devices) does not divide the {num_models} '
                      'models')
  if batch_size % data:
    raise ConfigError(f'the data axis ({data} devices) does not divide train.batch_size '
                      f'{batch_size}')
  return models, data


def device_mesh(strategy: str) -> Mesh:
  """The 2-D ('models', 'data') mesh of a 'mesh:AxB' strategy, over the first A * B
  devices of all processes."""
  models, data = parse_mesh(strategy)
  devices = np.asarray(jax.devices()[:models * data]).reshape(models, data)
  return Mesh(devices, (MODEL_AXIS, DATA_AXIS))


def _mesh_of(strategy: str, num_models: int) -> Mesh:
  return device_mesh(strategy) if is_mesh(strategy) else model_mesh(num_models)


def model_sharding(strategy: str, num_models: int) -> NamedSharding | None:
  """Where per-model leaves [M, ...] live under 'shard' and 'mesh' (split over the model
  axis); None for the strategies that leave placement to JAX. Passed as a jit's
  out_shardings, the state is created already sharded."""
  if not split_strategy(strategy)[0]:
    return None
  return NamedSharding(_mesh_of(strategy, num_models), PartitionSpec(MODEL_AXIS))


def put_models(tree, strategy: str):
  """Places per-model leaves [M, ...]: split over the mesh's model axis under 'shard' and
  'mesh', else unchanged."""
  sharding = model_sharding(strategy, jax.tree.leaves(tree)[0].shape[0])
  return tree if sharding is None else place(tree, sharding)


def put_shared(tree, strategy: str, num_models: int):
  """Places data every model reads (images, labels): a copy on every device of the mesh
  under 'shard' and 'mesh' (else each step would broadcast them), default placement
  otherwise."""
  if not split_strategy(strategy)[0]:
    return jax.device_put(tree)
  return place(tree, NamedSharding(_mesh_of(strategy, num_models), PartitionSpec()))


def batch_sharding(strategy: str, num_models: int) -> NamedSharding | None:
  """Where a host batch every model trains on ([B, ...] leaves) lives: split over the
  data axis under 'mesh', as put_shared otherwise (None: default placement)."""
  if is_mesh(strategy):
    return NamedSharding(device_mesh(strategy), PartitionSpec(DATA_AXIS))
  if split_strategy(strategy)[0]:
    return NamedSharding(model_mesh(num_models), PartitionSpec())
  return None


def put_batch(tree, strategy: str, num_models: int):
  """Places a host batch as batch_sharding says."""
  sharding = batch_sharding(strategy, num_models)
  return jax.device_put(tree) if sharding is None else place(tree, sharding)


def place(tree, sharding: NamedSharding):
  """jax.device_put(tree, sharding), also when the mesh spans several processes: then
  every process holds the whole host value and gives each of its devices its part
  (arrays already global pass through)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(one, tree)


def batch_constraint(strategy: str) -> Callable:
  """x [B, ...] -> x laid over the data axis under 'mesh' (one model's batch; under the
  model-axis vmap the models' axis is added), else x unchanged."""
  if not is_mesh(strategy):
    return lambda x: x
  sharding = NamedSharding(device_mesh(strategy), PartitionSpec(DATA_AXIS))
  return lambda x: jax.lax.with_sharding_constraint(x, sharding)


# ----------------------------------------------------------------------------------------
# The rule: which strategy and loop run when the config does not name them.
# ----------------------------------------------------------------------------------------
def default_strategy(backend: str, num_models: int, num_devices: int,
                     loop: str = 'auto') -> str:
  """The per-backend rule (train.strategy 'rule'). CPU: sharded over the devices when
  several divide M; else the models one after another ('sequential', unless train.loop is
  'scan'): on XLA:CPU one model's step already keeps the cores busy, an M-model program ran
  no faster and compiles M times longer, and vmapped convolutions become grouped ones,
  several times slower. GPU/TPU: vmapped; over several devices a 2-D mesh of models x
  data ('mesh', shape chosen by `mesh_shape`). (docs/benchmarks.md has the measurements.)"""
  if backend != 'cpu' and num_devices > 1:
    return MESH
  if mesh_size(num_models, num_devices) > 1:
    return 'shard'
  if backend != 'cpu':
    return 'vmap'
  return SEQUENTIAL if loop != 'scan' and num_models > 1 else 'unroll'


def resolve_strategy(strategy: str, num_models: int, loop: str = 'auto',
                     backend: str | None = None, batch_size: int = 1,
                     mesh: tuple[int, int] = (0, 0)) -> str:
  """A strategy name as given, checked; 'rule' -> default_strategy for this backend;
  'mesh' -> 'mesh:AxB' with the axis sizes `mesh` (0 = chosen by mesh_shape)."""
  if strategy == 'rule':
    strategy = default_strategy(backend or jax.default_backend(), num_models,
                                jax.device_count(), loop)
  if strategy == MESH:
    models, data = mesh_shape(num_models, batch_size, jax.device_count(), *mesh)
    return f'{MESH}:{models}x{data}'
  split_strategy(strategy)
  if is_mesh(strategy):
    mesh_shape(num_models, batch_size, jax.device_count(), *parse_mesh(strategy))
  return strategy


def resolve_loop(loop: str, backend: str | None = None, strategy: str | None = None) -> str:
  """'auto' -> 'python' (a compiled call per step) on CPU, where XLA runs a rolled
  `lax.scan` of a conv net many times slower than the same steps dispatched one by one,
  and for 'sequential' (a compiled call per model and step); 'scan' elsewhere."""
  if loop != 'auto':
    return loop
  cpu = (backend or jax.default_backend()) == 'cpu'
  return 'python' if cpu or (strategy and is_sequential(strategy)) else 'scan'


# ----------------------------------------------------------------------------------------
# The training step and prediction of all M models.
# ----------------------------------------------------------------------------------------
def lift_train_step(one_step: Callable, strategy: str, chunk_size: int) -> Callable:
  """one_model.make_train_step's one-model update lifted to the M models (unjitted; under
  'sequential' a host function calling a compiled one-model program), same arguments:

    train_step(state, inputs: one_model.ModelInputs, batch: one_model.Batch)
        -> (state, metrics [M])

  state and inputs carry the model axis; the batch is shared by all models.
  """
  step_all = over_models(lambda per_model, batch: one_step(*per_model, batch), strategy,
                         chunk_size, carry=True)
  train_step = lambda state, inputs, batch: step_all((state, inputs), batch)
  if is_sequential(strategy):  # the one-model program, compiled ahead of time
    train_step.compile = lambda state, inputs, batch: step_all.compile((state, inputs), batch)
  return train_step


def lift_predict(one_predict: Callable, strategy: str, chunk_size: int) -> Callable:
  """predict(state, batches uint8 [nb, B, H, W, C] on device) -> int32 [M, nb * B].

  One compiled call per batch: like training steps, a rolled `lax.scan` over batches runs
  many times slower on XLA:CPU, and batches already live on device.
  """
  predict_all = over_models(one_predict, strategy, chunk_size)
  predict_batch = jit(lambda variables, images: predict_all(variables, images), strategy)

  def predict(state, batches):
    variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    preds = [predict_batch(variables, batches[i]) for i in range(batches.shape[0])]
    return jnp.concatenate(preds, axis=1)

  return predict
