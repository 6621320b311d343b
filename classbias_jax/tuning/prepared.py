"""The training step the run compiles, on stand-in data: what the benchmark times and
train.strategy 'auto' measures."""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax.train import model_axis
from classbias_jax.train.plan import Plan, build_plan
from classbias_jax.train import one_model
from classbias_jax.tuning.flops import model_flops, step_flops


class PreparedStep(NamedTuple):
  run: Callable[[], None]  # trains all M models for steps_per_call steps, blocks until done
  compile_s: float
  flops: float  # per step, all models: model_flops (3x the forward pass)
  compiled: Any  # jax.stages.Compiled, e.g. for .as_text()
  steps_per_call: int
  xla_flops: float = 0.0  # per step, XLA's cost analysis (0 when the backend has none)


def stand_in_plan(config, *, image_shape, num_classes: int, strategy: str, loop: str,
                  num_batches: int) -> Plan:
  """The plan of `config` on num_batches batches of random images of this shape."""
  channels = image_shape[-1]
  config = config.copy_and_resolve_references()
  config.train.loop = loop
  return build_plan(config, num_train=num_batches * config.train.batch_size,
                        num_classes=num_classes, image_shape=image_shape,
                        mean=np.full(channels, 0.5, np.float32),
                        std=np.full(channels, 0.25, np.float32), strategy=strategy)


def _arguments(plan, model, num_batches: int):
  """(state, one_model.ModelInputs, (images, labels)) of the lifted step, on device as a
  run has them."""
  rng = np.random.default_rng(0)
  n = num_batches * plan.config.train.batch_size
  images = rng.integers(0, 256, (n,) + tuple(plan.image_shape), np.uint8)
  labels = rng.integers(0, plan.num_classes, n).astype(np.int32)
  keys = plan.keys()
  put = lambda tree: model_axis.put_models(tree, plan.strategy)
  init = one_model.init_fn(plan, model)
  state = put(jax.jit(jax.vmap(init))(keys['init']))
  inputs = put(one_model.ModelInputs({k: jnp.asarray(v) for k, v in plan.knobs.items()},
                                     keys['aug'], one_model.epoch_permutations(
                                         keys['data'], 0, n)))
  images, labels = model_axis.put_shared((images, labels), plan.strategy, plan.num_models)
  return state, inputs, (images, labels)


def prepared_step(model, config, *, image_shape, num_classes: int, strategy: str,
                  num_batches: int = 4, materialize: bool | None = None,
                  loop: str = 'python', count_flops: bool = True) -> PreparedStep:
  """The compiled training step for the sweep in `config`, as the trainer runs it, on
  random uint8 images [num_batches * B, *image_shape] held on device. loop 'python': one
  step per call; 'scan': num_batches steps per call (as an epoch with loop 'scan').
  materialize: the CPU model's weight-gradient operands computed once (models/), None:
  the model's own setting.

  Under 'shard' the flops of one device's program are multiplied by the devices used;
  under 'sequential' `compiled` is the one-model program and its flops are multiplied by M.
  """
  if materialize is not None and hasattr(model, 'materialize'):
    model = model.clone(materialize=int(materialize))
  plan = stand_in_plan(config, image_shape=image_shape, num_classes=num_classes,
                       strategy=strategy, loop=loop, num_batches=num_batches)
  train_step = model_axis.lift_train_step(one_model.make_train_step(plan, model), strategy,
                                          config.train.chunk_size)
  state, inputs, data = _arguments(plan, model, num_batches)
  args = (inputs, data)
  sequential = model_axis.is_sequential(strategy)
  one_step = lambda state, inputs, data, step: train_step(
      state, inputs, one_model.Batch(*data, jnp.int32(0), step))
  if loop == 'scan':
    def scanned(state, inputs, data):
      return jax.lax.scan(lambda s, i: one_step(s, inputs, data, i), state,
                          jnp.arange(num_batches, dtype=jnp.int32))
    fn, steps = scanned, [()]
  else:
    fn, steps = one_step, [(jnp.int32(i),) for i in range(num_batches)]
  t0 = time.perf_counter()
  if sequential:  # the one-model program (the models' calls use it), and fn calls it
    compiled = train_step.compile(state, inputs, one_model.Batch(*data, jnp.int32(0),
                                                                 jnp.int32(0)))
  else:
    compiled = fn = jax.jit(fn, donate_argnums=(0,)).lower(state, *args, *steps[0]).compile()
  compile_s = time.perf_counter() - t0
  box = {'state': state, 'calls': 0}

  def run():
    box['state'], metrics = fn(box['state'], *args, *steps[box['calls'] % len(steps)])
    box['calls'] += 1
    jax.block_until_ready((box['state'], metrics))

  flops = xla_flops = 0.0
  if count_flops:
    flops, xla_flops = _count_flops(plan, model, compiled, one_step, state, args, loop)
  return PreparedStep(run, compile_s, flops, compiled, num_batches if loop == 'scan' else 1,
                      xla_flops)


def _count_flops(plan, model, compiled, one_step, state, args, loop: str):
  """(model FLOPs, XLA's FLOPs) of one step of all models; one_step(state, inputs, data,
  step)."""
  flops = model_flops(model, plan.image_shape, plan.config.train.batch_size)
  # XLA's cost analysis counts no loop bodies (a scanned step is costed on its own) and,
  # on GPU, no cuDNN convolutions: kept beside the model count.
  xla = step_flops(compiled) if loop != 'scan' else step_flops(
      jax.jit(one_step).lower(state, *args, jnp.int32(0)))
  if model_axis.is_sequential(plan.strategy):  # the compiled program is one model's
    xla *= plan.num_models
  if model_axis.is_mesh(plan.strategy):
    devices = model_axis.device_mesh(plan.strategy).size
  elif model_axis.split_strategy(plan.strategy)[0]:
    devices = model_axis.model_mesh(plan.num_models).size
  else:
    devices = 1
  return flops * plan.num_models, devices * xla
