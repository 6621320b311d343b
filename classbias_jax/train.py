"""Trains the M = V * S models of a sweep together in one compiled program.

Every leaf of the train state has a leading model axis [M]; every per-model knob (weight
decay, learning rate, augmentation strengths) is a traced array [M]. An epoch is one
compiled call: per-model permutations, batch gathers, augmentation and updates all run
on device (`lax.scan` over steps), so the host does no work per step.

Seeds are common random numbers: model (v, s) takes its init, data order and
augmentation draws from seed s alone, so models that differ only in the sweep value see
the same batches and the same random draws.

Input modes (`data.input_mode`, see resolve_input_mode):
  resident  the uint8 images live on device; each model gathers its own batches from its
            own per-epoch permutation. Seeds vary init, data order and augmentation.
  streamed  a grain pipeline (data/stream.py) shuffles the training split per epoch with
            `config.seed` and feeds host batches that all M models share; each model
            still augments them with its own keys. Seeds vary init and augmentation; the
            data order is the same for every model, so it is not a seed-varied factor.

With `train.checkpoint_every` = k the run saves WORKDIR/checkpoint every k epochs
(checkpoint.py) and, started again with the same config, resumes from it; a streamed run
restores its grain iterator too, so it continues with the same batches.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from classbias_jax import checkpoint, configs, data, hostmem, parallel, plots, results
from classbias_jax import sweep as sweep_lib
from classbias_jax.errors import ConfigError
from classbias_jax.models import create_model

AUG_KNOBS = ('crop_scale_min', 'crop_scale_max', 'crop_ratio_min', 'crop_ratio_max',
             'flip_prob', 'color_strength')
ERASE_KNOBS = ('erase_prob', 'erase_scale_min', 'erase_scale_max', 'erase_ratio_min',
               'erase_ratio_max', 'erase_value')


# ----------------------------------------------------------------------------------------
# Optimiser: SGD with momentum and per-model (traced) weight decay.
# ----------------------------------------------------------------------------------------
def decay_mask(params, decay_norm_and_bias: bool):
  """True for the leaves weight decay applies to (all, or only conv/dense kernels)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay_norm_and_bias or path[-1].key == 'kernel', params)


def make_optimizer(optim_config, weight_decay, learning_rate) -> optax.GradientTransformation:
  """SGD + momentum. Coupled decay (default, as PyTorch's SGD): g + wd * p before momentum.
  Decoupled (SGDW): wd * p added after momentum. Both then scaled by -learning_rate, so
  the two traced scalars may differ per model."""
  decay = optax.add_decayed_weights(
      weight_decay, mask=lambda p: decay_mask(p, optim_config.decay_norm_and_bias))
  momentum = optax.trace(decay=optim_config.momentum, nesterov=optim_config.nesterov)
  parts = [momentum, decay] if optim_config.decoupled_weight_decay else [decay, momentum]
  return optax.chain(*parts, optax.scale(-learning_rate))


def lr_shape(optim_config, steps_per_epoch: int, epochs: int) -> Callable:
  """Learning-rate multiplier in [0, 1] of the global step: linear warmup, then cosine."""
  warmup = int(round(optim_config.warmup_epochs * steps_per_epoch))
  total = epochs * steps_per_epoch
  if optim_config.schedule == 'constant':
    return optax.linear_schedule(0.0, 1.0, max(warmup, 1)) if warmup else (lambda s: 1.0)
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warmup, 1), max(total, warmup + 1),
                                            end_value=0.0)


# ----------------------------------------------------------------------------------------
# Train state and keys.
# ----------------------------------------------------------------------------------------
def model_keys(sweep: sweep_lib.Sweep) -> dict[str, jax.Array]:
  """Per-model keys [M] for init, data order and augmentation, from the seed alone."""
  roots = jax.vmap(jax.random.key)(jnp.asarray(sweep.seeds[sweep.seed_index], jnp.uint32))
  fold = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(roots)
  return {'init': fold(0), 'data': fold(1), 'aug': fold(2)}


def init_state(model, optim_config, init_keys, image_shape) -> dict[str, Any]:
  """{'params', 'batch_stats', 'opt_state'}, every leaf with a leading model axis [M]."""
  def init_one(key):
    variables = model.init(key, jnp.zeros((1,) + tuple(image_shape)), train=False)
    opt_state = make_optimizer(optim_config, 0.0, 0.0).init(variables['params'])
    return {'params': variables['params'], 'batch_stats': variables['batch_stats'],
            'opt_state': opt_state}
  return jax.jit(jax.vmap(init_one))(init_keys)


def augment_ops(config, knobs: dict[str, np.ndarray]) -> tuple[tuple[str, ...], bool]:
  """Static choice of the augmentations to compile: (ops before normalisation, erase?)."""
  aug, swept = config.aug, config.sweep.name
  ops = []
  if aug.pad_crop > 0:
    ops.append('pad_crop')
  if aug.crop or swept.startswith('aug.crop_'):
    ops.append('crop')
  if (aug.flip or swept == 'aug.flip_prob') and np.max(knobs['flip_prob']) > 0:
    ops.append('flip')
  if np.max(knobs['color_strength']) > 0:
    ops.append('color')
  return tuple(ops), bool(np.max(knobs['erase_prob']) > 0)


def make_preprocess(config, ops: tuple[str, ...], erase: bool, mean, std) -> Callable:
  """Returns preprocess(key, images uint8 [B, H, W, C], labels [B], knobs) -> normalised
  float32 images, augmented with ONE model's knobs (scalars, or [C] per-class tables)."""
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def preprocess(key, images, labels, knobs):
    x = images.astype(jnp.float32) / 255.0
    if ops or erase:
      from classbias_jax import augment
      crop_key, erase_key = jax.random.split(key)
      if ops:
        x = augment.augment_batch(crop_key, x, labels, {k: knobs[k] for k in AUG_KNOBS}, ops,
                                  pad_crop=config.aug.pad_crop)
      x = (x - mean) / std
      if erase:
        x = augment.erase_batch(erase_key, x, labels, {k: knobs[k] for k in ERASE_KNOBS})
      return x
    return (x - mean) / std

  return preprocess


def epoch_permutations(data_keys, epoch, num_examples: int):
  """int32 [M, N]: each model's order of the training set in `epoch` (seed-determined)."""
  return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch),
                                                   num_examples))(data_keys)


# ----------------------------------------------------------------------------------------
# Update step and the compiled epoch.
# ----------------------------------------------------------------------------------------
def make_train_step(model, config, *, steps_per_epoch: int, ops: tuple[str, ...],
                    erase: bool, mean, std, strategy: str,
                    materialize: bool | None = None) -> Callable:
  """Returns the (unjitted) update of all M models on one batch each (under 'sequential' a
  host function calling a compiled one-model program; see parallel.jit):

    train_step(state, knobs, aug_keys, perms, images, labels, epoch, step) -> (state, metrics)

  state and knobs carry the model axis [M]; aug_keys keys [M]; perms int32 [M, N] (each
  model's order of the training set); images uint8 [N, H, W, C] and labels int32 [N] are
  shared; epoch and step int32 scalars (traced, so no step recompiles). With perms None
  (streamed input) images [B, H, W, C] and labels [B] are the batch every model trains on.
  metrics float32 [M] ('loss', 'accuracy') and bool [M] ('finite').

  materialize: the convolutions' weight-gradient operands computed once
  (models/conv.py `materialized`); None: the model's setting (on XLA:CPU only, where it
  pays; a conditional costs a host round trip on GPU/TPU).
  """
  if materialize is not None and hasattr(model, 'materialize'):
    model = model.clone(materialize=int(materialize))
  batch_size = config.train.batch_size
  shape = lr_shape(config.optim, steps_per_epoch, config.train.epochs)
  preprocess = make_preprocess(config, ops, erase, mean, std)

  def model_step(per_model, shared):
    state, knobs, perm, aug_key = per_model
    images, labels, epoch, step = shared
    if perm is None:  # streamed: the shared host batch, as given
      batch, y = images, labels
    else:
      idx = jax.lax.dynamic_slice_in_dim(perm, step * batch_size, batch_size)
      batch, y = images[idx], labels[idx]
    key = jax.random.fold_in(jax.random.fold_in(aug_key, epoch), step)
    x = preprocess(key, batch, y, knobs)

    def loss_fn(params):
      logits, new_vars = model.apply({'params': params, 'batch_stats': state['batch_stats']},
                                     x, train=True, mutable=['batch_stats'])
      smoothing = knobs['label_smoothing']
      smoothing = smoothing[y][:, None] if smoothing.ndim else smoothing  # per-class table
      targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, (logits, new_vars['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    global_step = epoch * steps_per_epoch + step
    lr = knobs['learning_rate'] * shape(global_step)
    tx = make_optimizer(config.optim, knobs['weight_decay'], lr)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    new_state = {'params': optax.apply_updates(state['params'], updates),
                 'batch_stats': batch_stats, 'opt_state': opt_state}
    metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == y),
               'finite': jnp.isfinite(loss)}
    return new_state, metrics

  step_all = parallel.over_models(model_step, strategy, config.train.chunk_size, carry=True)

  def split(state, knobs, aug_keys, perms, images, labels, epoch, step):
    return (state, knobs, perms, aug_keys), (images, labels, epoch, step)

  def train_step(*args):
    return step_all(*split(*args))

  if parallel.is_sequential(strategy):  # for prepared_step: the one-model program, AOT
    train_step.compile = lambda *args: step_all.compile(*split(*args))
  return train_step


def make_train_epoch(model, config, *, steps_per_epoch: int, ops: tuple[str, ...],
                     erase: bool, mean, std, strategy: str, loop: str) -> Callable:
  """Returns train_epoch(state, knobs, keys, images, labels, epoch) -> (state, metrics).

  loop 'scan': the whole epoch is one compiled call (`lax.scan` over steps); 'python': one
  compiled call per step (faster on XLA:CPU). Either way the data stay on device.

  images uint8 [N, H, W, C] and labels int32 [N] live on device; metrics are float32 [M]
  means over the epoch's steps ('loss', 'accuracy') and 'finite' (all losses finite).
  """
  if loop == 'scan' and parallel.is_sequential(strategy):
    raise ConfigError("train.strategy 'sequential' calls a compiled program per model and "
                      "step: it needs train.loop 'python'")
  train_step = make_train_step(model, config, steps_per_epoch=steps_per_epoch, ops=ops,
                               erase=erase, mean=mean, std=std, strategy=strategy)

  def summarise(metrics):  # per-step metrics [steps, M] -> epoch means [M]
    return {'loss': metrics['loss'].mean(0), 'accuracy': metrics['accuracy'].mean(0),
            'finite': metrics['finite'].all(0)}

  if loop == 'scan':
    def scan_epoch(state, knobs, keys, images, labels, epoch):
      perms = epoch_permutations(keys['data'], epoch, labels.shape[0])
      body = lambda state, step: train_step(state, knobs, keys['aug'], perms, images, labels,
                                            epoch, step)
      state, metrics = jax.lax.scan(body, state, jnp.arange(steps_per_epoch))
      return state, summarise(metrics)
    return jax.jit(scan_epoch, donate_argnums=(0,))

  # 'python': one compiled step per call. XLA:CPU runs a rolled `lax.scan` of a conv net
  # 10-15x slower than the same steps dispatched one by one (measured; docs/benchmarks.md),
  # while dispatching a step whose data already lives on device costs microseconds.
  step_jit = parallel.jit(train_step, strategy, donate_argnums=(0,))
  perms_jit = jax.jit(epoch_permutations, static_argnums=(2,))

  def python_epoch(state, knobs, keys, images, labels, epoch):
    perms = perms_jit(keys['data'], epoch, labels.shape[0])
    epoch = jnp.int32(epoch)
    per_step = []
    for step in range(steps_per_epoch):
      state, metrics = step_jit(state, knobs, keys['aug'], perms, images, labels, epoch,
                                jnp.int32(step))
      per_step.append(metrics)
    return state, summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *per_step))

  return python_epoch


# ----------------------------------------------------------------------------------------
# The compiled step on stand-in data: what `auto` measures and the benchmark CLI times.
# ----------------------------------------------------------------------------------------
class PreparedStep(NamedTuple):
  run: Callable[[], None]  # trains all M models for steps_per_call steps, blocks until done
  compile_s: float
  flops: float  # per step, all models: model_flops (3x the forward pass)
  compiled: Any  # jax.stages.Compiled, e.g. for .as_text()
  steps_per_call: int
  xla_flops: float = 0.0  # per step, XLA's cost analysis (0 when the backend has none)


def prepared_step(model, config, *, image_shape, num_classes: int, strategy: str,
                  num_batches: int = 4, materialize: bool | None = None,
                  loop: str = 'python', count_flops: bool = True) -> PreparedStep:
  """The compiled training step of `make_train_step` for the sweep in `config`, as
  make_train_epoch runs it, on random uint8 images [num_batches * B, *image_shape] held
  on device. loop 'python': one step per call; 'scan': num_batches steps per call (a
  `lax.scan`, as an epoch with loop 'scan').

  Under 'shard' the flops of one device's program are multiplied by the devices used;
  under 'sequential' `compiled` is the one-model program and its flops are multiplied by M.
  """
  sweep = sweep_lib.from_config(config)
  knobs_np = sweep_lib.knob_arrays(config, sweep, num_classes)
  ops, erase = augment_ops(config, knobs_np)
  batch_size = config.train.batch_size
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_batches * batch_size,) + tuple(image_shape), np.uint8)
  labels = rng.integers(0, num_classes, num_batches * batch_size).astype(np.int32)
  channels = image_shape[-1]
  train_step = make_train_step(model, config, steps_per_epoch=num_batches, ops=ops,
                               erase=erase, mean=np.full(channels, 0.5, np.float32),
                               std=np.full(channels, 0.25, np.float32), strategy=strategy,
                               materialize=materialize)
  keys = model_keys(sweep)
  put = lambda tree: parallel.put_models(tree, strategy)
  state = put(init_state(model, config.optim, keys['init'], image_shape))
  per_model = put(({k: jnp.asarray(v) for k, v in knobs_np.items()}, keys['aug'],
                   epoch_permutations(keys['data'], 0, len(labels))))
  shared = parallel.put_shared((images, labels), strategy, sweep.num_models)
  args = (*per_model, *shared, jnp.int32(0))
  sequential = parallel.is_sequential(strategy)
  if loop == 'scan':
    if sequential:
      raise ConfigError("strategy 'sequential' needs loop 'python'")

    def scanned(state, *args):
      return jax.lax.scan(lambda s, i: train_step(s, *args, i), state,
                          jnp.arange(num_batches, dtype=jnp.int32))
    fn, steps = scanned, [()]
  else:
    fn, steps = train_step, [(jnp.int32(i),) for i in range(num_batches)]
  t0 = time.perf_counter()
  if sequential:  # the one-model program (the models' calls use it), and fn calls it
    compiled = train_step.compile(state, *args, *steps[0])
  else:
    compiled = fn = jax.jit(fn, donate_argnums=(0,)).lower(state, *args, *steps[0]).compile()
  compile_s = time.perf_counter() - t0
  box = {'state': state, 'calls': 0}

  def run():
    box['state'], metrics = fn(box['state'], *args, *steps[box['calls'] % len(steps)])
    box['calls'] += 1
    jax.block_until_ready((box['state'], metrics))

  per_call = num_batches if loop == 'scan' else 1
  devices = parallel.model_mesh(sweep.num_models).size if parallel.split_strategy(
      strategy)[0] else 1
  flops = xla_flops = 0.0
  if count_flops:
    flops = model_flops(model, image_shape, batch_size) * sweep.num_models
    # XLA's cost analysis counts no loop bodies (a scanned step is costed on its own) and,
    # on GPU, no cuDNN convolutions: kept beside the model count.
    xla_flops = step_flops(compiled) if loop != 'scan' else step_flops(
        jax.jit(train_step).lower(state, *args, jnp.int32(0)))
    if sequential:  # the compiled program is one model's
      xla_flops *= sweep.num_models
  return PreparedStep(run, compile_s, flops, compiled, per_call, devices * xla_flops)


def model_flops(model, image_shape, batch_size: int) -> float:
  """Training FLOPs of one step of one model: 3x the forward pass's convolution and matmul
  FLOPs (the backward pass does twice the forward's work), 2 per multiply-add, counting
  only window taps that fall inside the input (padding excluded), as model FLOPs are
  usually counted. The same number on every backend, where XLA's cost analysis of a GPU
  program leaves out the cuDNN convolutions."""
  shape = (batch_size,) + tuple(image_shape)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                                train=False))
  forward = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  jaxpr = jax.make_jaxpr(forward)(variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  return 3 * _jaxpr_flops(jaxpr.jaxpr)


def _valid_taps(in_size: int, out_size: int, window: int, stride: int, pad_lo: int,
                lhs_dilation: int, rhs_dilation: int) -> int:
  """(output position, window tap) pairs of one spatial dimension that read an input
  element, not padding."""
  pos = (np.arange(out_size)[:, None] * stride - pad_lo
         + np.arange(window)[None, :] * rhs_dilation)
  return int(np.sum((pos >= 0) & (pos % lhs_dilation == 0)
                    & (pos // lhs_dilation < in_size)))


def _jaxpr_flops(jaxpr) -> float:
  """Convolution and matmul FLOPs of a jaxpr (sub-jaxprs included; a scan's body counts
  `length` times, a cond its costliest branch, a while loop's body once)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      lhs_spec, rhs_spec, out_spec = eqn.params['dimension_numbers']
      p = eqn.params
      taps = 1
      for i in range(len(rhs_spec) - 2):
        taps *= _valid_taps(lhs[lhs_spec[2 + i]], out[out_spec[2 + i]], rhs[rhs_spec[2 + i]],
                            p['window_strides'][i], p['padding'][i][0],
                            (p['lhs_dilation'] or (1,) * 3)[i],
                            (p['rhs_dilation'] or (1,) * 3)[i])
      total += 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * taps
    elif name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
    elif name == 'cond':
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params['branches'])
    else:
      inner = sum(_jaxpr_flops(getattr(v, 'jaxpr', v)) for v in eqn.params.values()
                  if isinstance(v, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)))
      total += inner * (eqn.params['length'] if name == 'scan' else 1)
  return float(total)


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled (or lowered) function by XLA's cost analysis (0 when
  unknown)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return 0.0
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))


# 'auto' measures only for runs this long: the measurement (a compile and a few steps of
# each candidate) then costs a few percent of the run at most.
MIN_STEPS_TO_MEASURE = 2000


def choose_strategy(config, model, *, image_shape, num_classes: int,
                    total_steps: int | None = None, measure_steps: int = 2) -> str:
  """config.train.strategy, with 'auto' resolved by parallel.resolve_strategy: cached per
  machine and workload, else measured here (a few steps of each candidate on stand-in
  data of the real shapes) when the run has at least MIN_STEPS_TO_MEASURE steps (or
  total_steps is None), else the fallback rule."""
  sweep = sweep_lib.from_config(config)
  ops, erase = augment_ops(config, sweep_lib.knob_arrays(config, sweep, num_classes))
  loop = config.train.loop  # 'auto' resolves per strategy: 'sequential' runs a step per call
  workload = {'model': config.model.name, 'width': config.model.width,
              'dtype': config.model.dtype, 'batch': config.train.batch_size,
              'image_shape': list(image_shape), 'num_classes': num_classes,
              'augment': list(ops) + ['erase'] * erase, 'chunk_size': config.train.chunk_size,
              'loop': loop}

  def measure(strategy: str, give_up_s: float | None) -> float:
    # As the run will call it (one step or a scan of steps per call); the first call
    # (allocation, warm-up) is not timed, so it cannot trip the give-up bar.
    step = prepared_step(model, config, image_shape=image_shape, num_classes=num_classes,
                         strategy=strategy, loop=resolve_loop(loop, strategy=strategy),
                         count_flops=False)
    step.run()
    bar = None if give_up_s is None else give_up_s * step.steps_per_call
    return parallel.median(parallel.time_calls(step.run, measure_steps, bar)) / (
        step.steps_per_call)

  worth_it = total_steps is None or total_steps >= MIN_STEPS_TO_MEASURE
  return parallel.resolve_strategy(config.train.strategy, num_models=sweep.num_models,
                                   workload=workload, measure=measure if worth_it else None,
                                   loop=loop)


def resolve_loop(loop: str, backend: str | None = None, strategy: str | None = None) -> str:
  """'auto' -> 'python' on CPU (see make_train_epoch) and for strategy 'sequential' (a
  compiled call per model and step), 'scan' elsewhere."""
  if loop != 'auto':
    return loop
  cpu = (backend or jax.default_backend()) == 'cpu'
  return 'python' if cpu or (strategy and parallel.is_sequential(strategy)) else 'scan'


def make_predict(model, *, mean, std, strategy: str, chunk_size: int) -> Callable:
  """Returns predict(state, batches uint8 [nb, B, H, W, C] on device) -> int32 [M, nb * B].

  One compiled call per batch: like training steps, a rolled `lax.scan` over batches runs
  many times slower on XLA:CPU, and batches already live on device.
  """
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def predict_one(variables, images):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    return jnp.argmax(model.apply(variables, x, train=False), -1).astype(jnp.int32)

  predict_all = parallel.over_models(predict_one, strategy, chunk_size)
  predict_batch = parallel.jit(lambda variables, images: predict_all(variables, images),
                               strategy)

  def predict(state, batches):
    variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    preds = [predict_batch(variables, batches[i]) for i in range(batches.shape[0])]
    return jnp.concatenate(preds, axis=1)

  return predict


def batch_for_eval(images: np.ndarray, batch_size: int) -> np.ndarray:
  """uint8 [N, ...] -> [ceil(N / B), B, ...], zero-padded; predictions past N are dropped."""
  n = len(images)
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  padded = np.zeros((num_batches * batch_size,) + images.shape[1:], images.dtype)
  padded[:n] = images
  return padded.reshape(num_batches, batch_size, *images.shape[1:])


# ----------------------------------------------------------------------------------------
# Progress and logs.
# ----------------------------------------------------------------------------------------
class Progress:
  """One status line per epoch: bar, epoch, ETA and means over models (stderr)."""

  def __init__(self, epochs: int, num_models: int, stream=sys.stderr, first_epoch: int = 0):
    self.epochs, self.num_models, self.stream = epochs, num_models, stream
    self.first_epoch = first_epoch
    self.start = time.time()
    self.tty = stream.isatty()

  def update(self, epoch: int, loss: float, accuracy: float, extra: str = '') -> None:
    done = epoch + 1
    elapsed = time.time() - self.start
    eta = elapsed / (done - self.first_epoch) * (self.epochs - done)
    filled = int(20 * done / self.epochs)
    line = (f'[{"#" * filled}{"." * (20 - filled)}] epoch {done}/{self.epochs} '
            f'{_clock(elapsed)} elapsed, ETA {_clock(eta)} | {self.num_models} models: '
            f'loss {loss:.3f} train acc {100 * accuracy:.1f}%{extra}')
    end = '\n' if not self.tty or done == self.epochs else ''
    self.stream.write(('\r' if self.tty else '') + line + end)
    self.stream.flush()


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 60}:{seconds % 60:02d}'


# ----------------------------------------------------------------------------------------
# Input modes: device-resident or streamed.
# ----------------------------------------------------------------------------------------
RESIDENT_FRACTION = 0.25  # of device memory; the rest holds M models' state and activations
RESIDENT_BYTES_CPU = 2 << 30  # where the device reports no memory size (XLA:CPU)


def resident_bytes(dataset) -> int:
  """Bytes the resident mode puts on each device: train, test and validation images."""
  splits = (dataset.train_images, dataset.test_images, dataset.val_images)
  return sum(images.nbytes for images in splits if images is not None)


def resolve_input_mode(mode: str, data_bytes: int, device=None) -> str:
  """'auto' -> 'resident' when `data_bytes` is under RESIDENT_FRACTION of the device's
  memory (RESIDENT_BYTES_CPU when it reports none, as on CPU), else 'streamed'.

  Under 'shard' every device holds a copy of the data, so one device's memory is the bound.
  """
  if mode != 'auto':
    return mode
  device = device or jax.devices()[0]
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # some backends do not implement memory_stats
    limit = None
  budget = RESIDENT_FRACTION * limit if limit else RESIDENT_BYTES_CPU
  return 'resident' if data_bytes < budget else 'streamed'


def train_stream(config, dataset, epochs: int):
  """The grain iterator of the streamed mode over the training split: `epochs` epochs of
  host batches {'image': uint8 [B, H, W, C], 'label': int32 [B]}, each epoch a fresh
  permutation seeded by `config.seed` (shared by all models), the last partial batch
  dropped (as the resident mode drops the end of each permutation).

  dataset: a data.Dataset (its arrays are streamed), or a stream.StreamedDataset from
  load_dataset, whose images the pipeline reads and decodes from the dataset's files.
  `data.workers` grain worker processes decode; the batches are the same.
  """
  from classbias_jax.data import stream
  if isinstance(dataset, data.Dataset):
    source = stream.ArraySource(dataset.train_images, dataset.train_labels)
    options = {'mode': 'L' if dataset.image_shape[-1] == 1 else 'RGB'}
  else:
    source, options = dataset.train_source, dataset.stream_options()
  return iter(stream.pipeline(source, batch_size=config.train.batch_size, seed=config.seed,
                              num_epochs=epochs, shuffle=True, drop_remainder=True,
                              num_workers=config.data.workers, **options))


def load_dataset(data_config, mode: str):
  """(dataset, input mode) for input mode `mode` ('auto', 'resident' or 'streamed').

  resident: data.load, every split decoded into host memory. streamed: data.open_streamed,
  which never decodes the training split up front (train_stream reads it lazily). auto:
  opened as for streamed, so that its resident size (N x H x W x C bytes) is known without
  decoding it, and loaded as for resident only when resolve_input_mode picks resident.
  """
  if mode == 'resident':
    return data.load(data_config), mode
  dataset = data.open_streamed(data_config)
  in_memory = isinstance(dataset, data.Dataset)
  mode = resolve_input_mode(mode, resident_bytes(dataset) if in_memory
                            else dataset.resident_bytes())
  if mode == 'resident' and not in_memory:
    dataset = data.load(data_config)
  return dataset, mode


def make_streamed_epoch(model, config, *, steps_per_epoch: int, ops: tuple[str, ...],
                        erase: bool, mean, std, strategy: str) -> Callable:
  """Returns streamed_epoch(state, knobs, keys, batches, epoch) -> (state, metrics).

  batches: an iterator of host batches (train_stream); the epoch takes steps_per_epoch of
  them. Every model trains on each batch as given, augmented with its own keys['aug'];
  keys['data'] is unused (the pipeline sets the order). One compiled call per step: the
  next batch is read and sent to the device while the step just dispatched runs (dispatch
  is asynchronous), so host input overlaps device compute. Batches do not cross epochs,
  so after an epoch the iterator's state is exactly the next epoch's start.
  metrics: as make_train_epoch's.
  """
  train_step = make_train_step(model, config, steps_per_epoch=steps_per_epoch, ops=ops,
                               erase=erase, mean=mean, std=std, strategy=strategy)
  step_jit = parallel.jit(train_step, strategy, donate_argnums=(0,))

  def streamed_epoch(state, knobs, keys, batches, epoch):
    num_models = keys['aug'].shape[0]
    put = lambda b: parallel.put_shared((b['image'], b['label']), strategy, num_models)
    epoch = jnp.int32(epoch)
    upcoming, per_step = put(next(batches)), []
    for step in range(steps_per_epoch):
      images, labels = upcoming
      state, metrics = step_jit(state, knobs, keys['aug'], None, images, labels, epoch,
                                jnp.int32(step))
      if step + 1 < steps_per_epoch:
        upcoming = put(next(batches))
      per_step.append(metrics)
    metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)  # [steps, M]
    return state, {'loss': metrics['loss'].mean(0), 'accuracy': metrics['accuracy'].mean(0),
                   'finite': metrics['finite'].all(0)}

  return streamed_epoch


# ----------------------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------------------
def checkpoint_meta(config, input_mode: str, diverged, curve_epochs: list[int],
                    eval_epochs: list[int], curves: dict[str, list], batches=None) -> dict:
  """meta.json of a checkpoint: the config, and what the loop has collected as JSON lists
  (float32 and float64 values survive JSON exactly), plus the grain iterator's state."""
  return {'config': checkpoint.config_json(config), 'input_mode': input_mode,
          'diverged': np.asarray(diverged).tolist(), 'curve_epochs': list(curve_epochs),
          'eval_epochs': list(eval_epochs),
          'curves': {k: [np.asarray(a).tolist() for a in v] for k, v in curves.items()},
          'stream_state': None if batches is None else batches.get_state()}


def truncate_metrics(path: str, epochs_done: int) -> None:
  """Keeps the records of the first `epochs_done` epochs in metrics.jsonl: a resumed run
  repeats the epochs after its checkpoint, which a crash may have logged already."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip() and json.loads(line)['epoch'] <= epochs_done]
  results.write_bytes(path, ''.join(lines).encode())


def run(config, workdir: str) -> dict[str, np.ndarray]:
  """Trains the sweep in `config`, writes results into `workdir`, returns the results."""
  # Config and data first: a bad config or missing dataset leaves nothing written.
  configs.validate(config)
  sweep = sweep_lib.from_config(config)
  # A checkpoint of another config is refused here, before anything is written.
  resume = checkpoint.read_meta(workdir, config)
  # A resumed run keeps its input mode: the two modes order the data differently.
  dataset, input_mode = load_dataset(config.data, resume['input_mode'] if resume
                                     else config.data.input_mode)
  num_train = dataset.num_train
  batch_size = config.train.batch_size
  if num_train < batch_size:
    raise ConfigError(f'train.batch_size {batch_size} exceeds the {num_train} training images')
  steps_per_epoch = num_train // batch_size
  knobs_np = sweep_lib.knob_arrays(config, sweep, dataset.num_classes)
  ops, erase = augment_ops(config, knobs_np)
  mean, std = dataset.channel_stats()
  dtype = jnp.bfloat16 if config.model.dtype == 'bfloat16' else jnp.float32
  model = create_model(config.model.name, dataset.num_classes, config.model.width, dtype)
  strategy = choose_strategy(config, model, image_shape=dataset.image_shape,
                             num_classes=dataset.num_classes,
                             total_steps=config.train.epochs * steps_per_epoch)
  loop = resolve_loop(config.train.loop, strategy=strategy)
  streamed = input_mode == 'streamed'

  os.makedirs(workdir, exist_ok=True)
  resolved = config.to_dict()
  resolved['resolved'] = {'strategy': strategy, 'loop': loop, 'input_mode': input_mode,
                          'augment_ops': list(ops), 'erase': erase,
                          'num_models': sweep.num_models, 'seeds': sweep.seeds.tolist(),
                          'steps_per_epoch': steps_per_epoch, 'backend': jax.default_backend(),
                          'host_malloc': hostmem.in_effect(),
                          'class_names': list(dataset.class_names)}
  results.write_json(os.path.join(workdir, 'config.json'), resolved)
  print(f'{sweep.num_models} models ({len(sweep.values)} values of {sweep.name} x '
        f'{len(sweep.seeds)} seeds) on {dataset.name} ({num_train} train / '
        f'{len(dataset.test_labels)} test images, {dataset.num_classes} classes), '
        f'{config.model.name}, strategy {strategy}, input {input_mode}, '
        f'augment {list(ops) + ["erase"] * erase}', file=sys.stderr)
  if resume:
    print(f'resuming from the checkpoint after epoch {resume["epoch"]}', file=sys.stderr)

  # Device-resident data and state.
  # Under 'shard' per-model leaves are split over the devices and the data copied to each.
  keys = parallel.put_models(model_keys(sweep), strategy)
  state = parallel.put_models(init_state(model, config.optim, keys['init'], dataset.image_shape),
                              strategy)
  if resume:
    state = checkpoint.restore_state(workdir, state)
  knobs = parallel.put_models({k: jnp.asarray(v) for k, v in knobs_np.items()}, strategy)
  batches = None
  if streamed:  # host batches; a resumed run continues where its checkpoint left them
    batches = train_stream(config, dataset, config.train.epochs)
    if resume:
      batches.set_state(resume['stream_state'])
    streamed_epoch = make_streamed_epoch(model, config, steps_per_epoch=steps_per_epoch,
                                         ops=ops, erase=erase, mean=mean, std=std,
                                         strategy=strategy)
    train_epoch = lambda state, knobs, keys, epoch: streamed_epoch(state, knobs, keys,
                                                                   batches, epoch)
  else:
    train_images, train_labels = parallel.put_shared(
        (dataset.train_images, dataset.train_labels), strategy, sweep.num_models)
    resident_epoch = make_train_epoch(model, config, steps_per_epoch=steps_per_epoch, ops=ops,
                                      erase=erase, mean=mean, std=std, strategy=strategy,
                                      loop=loop)
    train_epoch = lambda state, knobs, keys, epoch: resident_epoch(
        state, knobs, keys, train_images, train_labels, epoch)
  predict = make_predict(model, mean=mean, std=std, strategy=strategy,
                         chunk_size=config.train.chunk_size)
  test_batches = batch_for_eval(dataset.test_images, config.train.eval_batch_size)
  if not streamed:  # streamed: sent a batch per call, as large test sets need
    test_batches = parallel.put_shared(test_batches, strategy, sweep.num_models)
  num_test = len(dataset.test_labels)

  def test_predictions(state):
    return np.asarray(predict(state, test_batches))[:, :num_test]

  # Train loop.
  epochs = config.train.epochs
  curves = {'train_loss': [], 'train_accuracy': [], 'test_accuracy_curve': []}
  curve_epochs, eval_epochs = [], []
  diverged = np.zeros(sweep.num_models, bool)
  start = resume['epoch'] if resume else 0
  if resume:
    diverged = np.asarray(resume['diverged'], bool)
    curve_epochs, eval_epochs = resume['curve_epochs'], resume['eval_epochs']
    curves = {k: [np.asarray(a) for a in v] for k, v in resume['curves'].items()}
  progress = Progress(epochs, sweep.num_models, first_epoch=start)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  truncate_metrics(metrics_path, start)
  with open(metrics_path, 'a' if resume else 'w') as log:
    for epoch in range(start, epochs):
      t0 = time.time()
      state, metrics = train_epoch(state, knobs, keys, epoch)
      metrics = jax.device_get(metrics)
      newly = ~metrics['finite'] & ~diverged
      if newly.any():
        print(f'\nwarning: models {np.flatnonzero(newly).tolist()} diverged (non-finite loss) '
              f'in epoch {epoch + 1}; they are flagged in results["diverged"]', file=sys.stderr)
      diverged |= ~metrics['finite']
      record = {'epoch': epoch + 1, 'seconds': round(time.time() - t0, 3),
                'train_loss': metrics['loss'].tolist(),
                'train_accuracy': metrics['accuracy'].tolist()}
      curve_epochs.append(epoch + 1)
      curves['train_loss'].append(metrics['loss'])
      curves['train_accuracy'].append(metrics['accuracy'])
      extra = ''
      every = config.train.eval_every
      if every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
        last_predictions = test_predictions(state)
        accuracy = (last_predictions == dataset.test_labels).mean(1)
        record['test_accuracy'] = accuracy.tolist()
        eval_epochs.append(epoch + 1)
        curves['test_accuracy_curve'].append(accuracy)
        extra = f' test acc {100 * np.mean(accuracy[~diverged]) if (~diverged).any() else 0:.1f}%'
      log.write(json.dumps(record) + '\n')
      log.flush()
      ok = ~diverged if (~diverged).any() else np.ones_like(diverged)
      progress.update(epoch, float(np.mean(metrics['loss'][ok])),
                      float(np.mean(metrics['accuracy'][ok])), extra)
      save_every = config.train.checkpoint_every
      if save_every and (epoch + 1) % save_every == 0 and epoch + 1 < epochs:
        checkpoint.save(workdir, epoch + 1, state, checkpoint_meta(
            config, input_mode, diverged, curve_epochs, eval_epochs, curves, batches))

  # Evaluation and results (the last epoch's evaluation already has the predictions).
  predictions = last_predictions if eval_epochs and eval_epochs[-1] == epochs else (
      test_predictions(state))
  arrays = {
      'test_labels': dataset.test_labels.astype(np.int32),
      'test_predictions': sweep.unflatten(predictions),
      'per_class_accuracy': sweep.unflatten(results.per_class_accuracy(
          dataset.test_labels, predictions, dataset.num_classes)),
      'mean_accuracy': sweep.unflatten((predictions == dataset.test_labels).mean(1)).astype(
          np.float32),
      'sweep_name': np.asarray(sweep.name),
      'sweep_values': sweep.values,
      'seeds': sweep.seeds,
      'class_names': np.asarray(dataset.class_names),
      'diverged': sweep.unflatten(diverged),
      'curve_epochs': np.asarray(curve_epochs, np.int32),
      'train_loss': sweep.unflatten(np.stack(curves['train_loss'], 1)).astype(np.float32),
      'train_accuracy': sweep.unflatten(np.stack(curves['train_accuracy'], 1)).astype(np.float32),
  }
  if eval_epochs:
    arrays['eval_epochs'] = np.asarray(eval_epochs, np.int32)
    arrays['test_accuracy_at_eval'] = sweep.unflatten(
        np.stack(curves['test_accuracy_curve'], 1)).astype(np.float32)
  if dataset.val_images is not None:
    val_batches = batch_for_eval(dataset.val_images, config.train.eval_batch_size)  # sent per call
    val = np.asarray(predict(state, val_batches))[:, :len(dataset.val_labels)]
    arrays['val_labels'] = dataset.val_labels.astype(np.int32)
    arrays['val_predictions'] = sweep.unflatten(val)
  results.save(workdir, arrays)
  checkpoint.remove(workdir)  # the results hold what it was kept for
  figure = plots.per_class_accuracy(arrays, os.path.join(workdir, 'figures',
                                                         'per_class_accuracy.png'))
  summary = arrays['mean_accuracy'].mean(1)
  print('mean test accuracy per sweep value: ' + ', '.join(
      f'{v:g}: {100 * a:.1f}%' for v, a in zip(sweep.values, summary)), file=sys.stderr)
  print(f'wrote {os.path.join(workdir, results.RESULTS_FILE)} and {figure}', file=sys.stderr)
  return arrays
