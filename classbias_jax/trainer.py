"""Runs a study: data, plan, state, epochs, evaluation, results, in that order.

Every leaf of the train state has a leading model axis [M] and every per-model knob is a
traced array [M] (plan.py), so one compiled program serves the sweep; model_axis.py runs
the one-model step of step.py over the M models. The data stay on device (resident
input) or arrive as host batches shared by all models (streamed input, data/modes.py);
one epoch loop serves both.

With `train.checkpoint_every` = k the run saves WORKDIR/checkpoint every k epochs
(checkpoint.py) and, started again with the same config, resumes from it; a streamed run
restores its grain iterator too, so it continues with the same batches.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax import checkpoint, configs, model_axis, plan as plan_lib, plots, results
from classbias_jax import step as step_lib
from classbias_jax.data import modes
from classbias_jax.models import create_model
from classbias_jax.tuning import hostmem

ENV_COMPILE_CACHE = 'CLASSBIAS_COMPILE_CACHE'


def setup_compile_cache(config) -> str:
  """Turns on JAX's persistent compilation cache at train.compile_cache (or
  $CLASSBIAS_COMPILE_CACHE; '' = off), so a rerun of a study skips compilation. Returns
  the folder in use ('' when off)."""
  path = os.environ.get(ENV_COMPILE_CACHE, config.train.compile_cache)
  if path:
    path = os.path.expanduser(path)
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path


# ----------------------------------------------------------------------------------------
# Plan and state.
# ----------------------------------------------------------------------------------------
def make_plan(config, dataset, model) -> plan_lib.Plan:
  """The plan of `config` on `dataset`; train.strategy 'auto' measured here (opt-in)."""
  strategy = None
  if config.train.strategy == 'auto':
    from classbias_jax.tuning import strategy as tuning_strategy
    steps = config.train.epochs * (dataset.num_train // config.train.batch_size)
    strategy = tuning_strategy.choose(config, model, image_shape=dataset.image_shape,
                                      num_classes=dataset.num_classes, total_steps=steps)
  mean, std = dataset.channel_stats()
  return plan_lib.build(config, num_train=dataset.num_train, num_classes=dataset.num_classes,
                        image_shape=dataset.image_shape, mean=mean, std=std,
                        strategy=strategy)


def initial_state(plan, model, workdir: str, resume) -> tuple[dict, dict, dict]:
  """(keys, state, knobs) placed for the strategy; the state restored when resuming."""
  put = lambda tree: model_axis.put_models(tree, plan.strategy)
  keys = put(plan.keys())
  init = lambda key: step_lib.init_state(model, plan.image_shape, key)
  state = put(jax.jit(jax.vmap(init))(keys['init']))
  if resume:
    state = checkpoint.restore_state(workdir, state)
  knobs = put({k: jnp.asarray(v) for k, v in plan.knobs.items()})
  return keys, state, knobs


# ----------------------------------------------------------------------------------------
# Input: a batch source per epoch, for both input modes.
# ----------------------------------------------------------------------------------------
class ResidentInput:
  """The training split on device; each model gathers its batches in its own order."""

  def __init__(self, plan, dataset):
    self.plan = plan
    self.images, self.labels = model_axis.put_shared(
        (dataset.train_images, dataset.train_labels), plan.strategy, plan.num_models)
    self._perms = jax.jit(step_lib.epoch_permutations, static_argnums=(2,))

  def epoch(self, keys, epoch: int) -> Iterator[tuple]:
    """(perms [M, N], images, labels) for each step of the epoch."""
    perms = self._perms(keys['data'], epoch, self.labels.shape[0])
    for _ in range(self.plan.steps_per_epoch):
      yield perms, self.images, self.labels


class StreamedInput:
  """Host batches from a grain iterator, shared by all models. The next batch is sent to
  the device after the current step is dispatched, so host input overlaps compute.
  Batches do not cross epochs: after an epoch the iterator is at the next one's start."""

  def __init__(self, plan, batches):
    self.plan, self.batches = plan, batches

  def epoch(self, keys, epoch: int) -> Iterator[tuple]:
    del keys, epoch  # the pipeline sets the order
    put = lambda b: model_axis.put_shared((b['image'], b['label']), self.plan.strategy,
                                          self.plan.num_models)
    upcoming = put(next(self.batches))
    for step in range(self.plan.steps_per_epoch):
      yield (None, *upcoming)
      if step + 1 < self.plan.steps_per_epoch:
        upcoming = put(next(self.batches))


def make_input(plan, dataset, input_mode: str, workdir: str, resume):
  if input_mode == 'resident':
    return ResidentInput(plan, dataset)
  batches = modes.train_stream(plan.config, dataset, plan.config.train.epochs)
  if resume:  # continues where its checkpoint left the batches
    batches = checkpoint.restore_batches(workdir, batches)
  return StreamedInput(plan, batches)


# ----------------------------------------------------------------------------------------
# Epochs.
# ----------------------------------------------------------------------------------------
def _summarise(metrics):  # per-step metrics [steps, M] -> epoch means [M]
  return {'loss': metrics['loss'].mean(0), 'accuracy': metrics['accuracy'].mean(0),
          'finite': metrics['finite'].all(0)}


def make_train_epoch(plan, model, source) -> Callable:
  """train_epoch(state, knobs, keys, epoch) -> (state, metrics float32 [M] 'loss' and
  'accuracy' means over the epoch's steps, bool [M] 'finite').

  loop 'python': one compiled call per step (XLA:CPU runs a rolled `lax.scan` of a conv
  net many times slower than the same steps dispatched one by one); 'scan' (resident
  input): the whole epoch is one compiled call.
  """
  train_step = model_axis.lift_train_step(step_lib.make_train_step(plan, model),
                                          plan.strategy, plan.config.train.chunk_size)
  if plan.loop == 'scan':
    def scan_epoch(state, knobs, keys, images, labels, epoch):
      perms = step_lib.epoch_permutations(keys['data'], epoch, labels.shape[0])
      body = lambda state, step: train_step(state, knobs, keys['aug'], perms, images, labels,
                                            epoch, step)
      state, metrics = jax.lax.scan(body, state, jnp.arange(plan.steps_per_epoch))
      return state, _summarise(metrics)
    scanned = jax.jit(scan_epoch, donate_argnums=(0,))
    return lambda state, knobs, keys, epoch: scanned(state, knobs, keys, source.images,
                                                     source.labels, epoch)
  step_jit = model_axis.jit(train_step, plan.strategy, donate_argnums=(0,))

  def python_epoch(state, knobs, keys, epoch):
    per_step = []
    for step, (perms, images, labels) in enumerate(source.epoch(keys, epoch)):
      state, metrics = step_jit(state, knobs, keys['aug'], perms, images, labels,
                                jnp.int32(epoch), jnp.int32(step))
      per_step.append(metrics)
    return state, _summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *per_step))

  return python_epoch


def make_evaluate(plan, model, images: np.ndarray, on_device: bool) -> Callable:
  """evaluate(state) -> int32 [M, N]: every model's class for each of `images`. on_device:
  the batches are put on device once (else sent a batch per call, as large sets need)."""
  predict = model_axis.lift_predict(step_lib.make_predict(plan, model), plan.strategy,
                                    plan.config.train.chunk_size)
  batches = batch_for_eval(images, plan.config.train.eval_batch_size)
  if on_device:
    batches = model_axis.put_shared(batches, plan.strategy, plan.num_models)
  return lambda state: np.asarray(predict(state, batches))[:, :len(images)]


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


def truncate_metrics(path: str, epochs_done: int) -> None:
  """Keeps the records of the first `epochs_done` epochs in metrics.jsonl: a resumed run
  repeats the epochs after its checkpoint, which a crash may have logged already."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip() and json.loads(line)['epoch'] <= epochs_done]
  results.write_bytes(path, ''.join(lines).encode())


def _record_epoch(history: results.History, epoch: int, metrics, seconds: float) -> dict:
  """Adds an epoch's metrics to `history`; warns about newly diverged models; returns the
  epoch's metrics.jsonl record."""
  newly = ~metrics['finite'] & ~history.diverged
  if newly.any():
    print(f'\nwarning: models {np.flatnonzero(newly).tolist()} diverged (non-finite loss) '
          f'in epoch {epoch + 1}; they are flagged in results["diverged"]', file=sys.stderr)
  history.diverged |= ~metrics['finite']
  history.curve_epochs.append(epoch + 1)
  history.curves['train_loss'].append(metrics['loss'])
  history.curves['train_accuracy'].append(metrics['accuracy'])
  return {'epoch': epoch + 1, 'seconds': round(seconds, 3),
          'train_loss': metrics['loss'].tolist(),
          'train_accuracy': metrics['accuracy'].tolist()}


def _evaluate_epoch(history, record, epoch: int, predictions, labels) -> str:
  """Test accuracy of every model into the record and history; the progress line's note."""
  accuracy = (predictions == labels).mean(1)
  record['test_accuracy'] = accuracy.tolist()
  history.eval_epochs.append(epoch + 1)
  history.curves['test_accuracy_curve'].append(accuracy)
  ok = ~history.diverged
  return f' test acc {100 * np.mean(accuracy[ok]) if ok.any() else 0:.1f}%'


# ----------------------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------------------
def train_epochs(run_state: dict[str, Any], plan, train_epoch, evaluate, dataset,
                 workdir: str, start: int, save) -> np.ndarray | None:
  """Epochs `start`..E: trains, logs metrics.jsonl, evaluates every train.eval_every
  epochs, checkpoints every train.checkpoint_every. run_state holds 'state', 'knobs',
  'keys' and 'history' (updated). Returns the last epoch's test predictions when that
  epoch was evaluated."""
  train = plan.config.train
  history, last = run_state['history'], None
  progress = Progress(train.epochs, plan.num_models, first_epoch=start)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  truncate_metrics(metrics_path, start)
  with open(metrics_path, 'a' if start else 'w') as log:
    for epoch in range(start, train.epochs):
      t0 = time.time()
      run_state['state'], metrics = train_epoch(run_state['state'], run_state['knobs'],
                                                run_state['keys'], epoch)
      metrics = jax.device_get(metrics)
      record = _record_epoch(history, epoch, metrics, time.time() - t0)
      extra, last = '', None
      if train.eval_every and ((epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs):
        last = evaluate(run_state['state'])
        extra = _evaluate_epoch(history, record, epoch, last, dataset.test_labels)
      log.write(json.dumps(record) + '\n')
      log.flush()
      ok = ~history.diverged if (~history.diverged).any() else np.ones_like(history.diverged)
      progress.update(epoch, float(np.mean(metrics['loss'][ok])),
                      float(np.mean(metrics['accuracy'][ok])), extra)
      every = train.checkpoint_every
      if every and (epoch + 1) % every == 0 and epoch + 1 < train.epochs:
        save(epoch + 1, run_state['state'])
  return last


def _announce(plan, dataset, input_mode: str, resume) -> None:
  sweep, model = plan.sweep, plan.config.model.name
  augment = list(plan.ops) + ['erase'] * plan.erase
  print(f'{sweep.num_models} models ({len(sweep.values)} values of {sweep.name} x '
        f'{len(sweep.seeds)} seeds) on {dataset.name} ({dataset.num_train} train / '
        f'{len(dataset.test_labels)} test images, {dataset.num_classes} classes), '
        f'{model}, strategy {plan.strategy}, input {input_mode}, augment {augment}',
        file=sys.stderr)
  if resume:
    print(f'resuming from the checkpoint after epoch {resume["epoch"]}', file=sys.stderr)


def _write_config(workdir: str, plan, dataset, input_mode: str) -> None:
  resolved = plan.config.to_dict()
  resolved['resolved'] = dict(plan.resolved(), input_mode=input_mode,
                              host_malloc=hostmem.in_effect(),
                              class_names=list(dataset.class_names))
  results.write_json(os.path.join(workdir, 'config.json'), resolved)


def _finish(workdir: str, plan, arrays) -> None:
  results.save(workdir, arrays)
  checkpoint.remove(workdir)  # the results hold what it was kept for
  figure = plots.per_class_accuracy(arrays, os.path.join(workdir, 'figures',
                                                         'per_class_accuracy.png'))
  summary = arrays['mean_accuracy'].mean(1)
  print('mean test accuracy per sweep value: ' + ', '.join(
      f'{v:g}: {100 * a:.1f}%' for v, a in zip(plan.sweep.values, summary)), file=sys.stderr)
  print(f'wrote {os.path.join(workdir, results.RESULTS_FILE)} and {figure}', file=sys.stderr)


def run(config, workdir: str) -> dict[str, np.ndarray]:
  """Trains the sweep in `config`, writes results into `workdir`, returns the results."""
  # Data: a bad config, a checkpoint of another config or a missing dataset stops the run
  # before anything is written.
  configs.validate(config)
  resume = checkpoint.read_meta(workdir, config)
  # A resumed run keeps its input mode: the two modes order the data differently.
  dataset, input_mode = modes.load_dataset(
      config.data, resume['input_mode'] if resume else config.data.input_mode)

  # Plan.
  dtype = jnp.bfloat16 if config.model.dtype == 'bfloat16' else jnp.float32
  model = create_model(config.model.name, dataset.num_classes, config.model.width, dtype)
  plan = make_plan(config, dataset, model)
  os.makedirs(workdir, exist_ok=True)
  _write_config(workdir, plan, dataset, input_mode)
  _announce(plan, dataset, input_mode, resume)

  # State.
  keys, state, knobs = initial_state(plan, model, workdir, resume)
  history = (results.History.from_json(resume) if resume
             else results.History(np.zeros(plan.num_models, bool)))
  run_state = {'state': state, 'knobs': knobs, 'keys': keys, 'history': history}
  source = make_input(plan, dataset, input_mode, workdir, resume)
  streamed = isinstance(source, StreamedInput)

  def save(epoch: int, state) -> None:
    meta = dict(history.to_json(), config=checkpoint.config_json(config),
                input_mode=input_mode)
    checkpoint.save(workdir, epoch, state, meta, batches=source.batches if streamed else None)

  # Epochs.
  evaluate = make_evaluate(plan, model, dataset.test_images, on_device=not streamed)
  last = train_epochs(run_state, plan, make_train_epoch(plan, model, source), evaluate,
                      dataset, workdir, resume['epoch'] if resume else 0, save)

  # Evaluation and results (the last epoch's evaluation already has the predictions).
  state = run_state['state']
  predictions = last if last is not None else evaluate(state)
  val = None
  if dataset.val_images is not None:
    val = make_evaluate(plan, model, dataset.val_images, on_device=False)(state)
  arrays = results.assemble(plan.sweep, dataset, predictions, history, val)
  _finish(workdir, plan, arrays)
  return arrays
