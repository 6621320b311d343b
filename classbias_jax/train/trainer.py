"""Runs a study: data, plan, state, epochs, evaluation, results, in that order.

Every leaf of the train state has a leading model axis [M] and every per-model knob is a
traced array [M] (plan.py), so one compiled program serves the sweep; model_axis.py runs
the one-model step of train/one_model.py over the M models. The data stay on device (resident
input) or arrive as host batches shared by all models (streamed input, data/modes.py);
one epoch loop serves both.

The run saves WORKDIR/checkpoint by the rules of interrupts.py (every k epochs, every n steps,
every t minutes: default 10, and on SIGTERM/SIGINT) and, started again with the same
config, resumes from it at the step after it; a streamed run restores its grain iterator
too, so it continues with the same batches.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax import configs, data, files, results, versions
from classbias_jax.data import modes
from classbias_jax.errors import ConfigError
from classbias_jax.models import create_model
from classbias_jax.train import (checkpoint, design, device_memory, distributed, epochs,
                                 interrupts, model_axis, one_model, prune, study_dir, summaries)
from classbias_jax.train.epochs import make_train_epoch  # noqa: F401 (trainer's API)
from classbias_jax.train.interrupts import Interrupted  # noqa: F401 (trainer's API)
from classbias_jax.train.history import History
from classbias_jax.train.plan import Plan, build_plan
from classbias_jax.tuning import hostmem, strategy as tuning_strategy

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
def make_plan(config, dataset, model) -> Plan:
  """The plan of `config` on `dataset`; train.strategy 'auto' measured here (opt-in)."""
  strategy = None
  if config.train.strategy == 'auto':
    steps = config.train.epochs * (dataset.num_train // config.train.batch_size)
    strategy = tuning_strategy.choose(config, model, image_shape=dataset.image_shape,
                                      num_classes=dataset.num_classes, total_steps=steps)
  mean, std = dataset.channel_stats()
  return build_plan(config, num_train=dataset.num_train, num_classes=dataset.num_classes,
                        image_shape=dataset.image_shape, mean=mean, std=std,
                        strategy=strategy)


def initial_state(plan, model, workdir: str, resume) -> tuple[dict, dict, dict]:
  """(keys, state, knobs) placed for the strategy (under 'shard' and 'mesh' created
  already split over the model axis); the state restored when resuming."""
  sharding = model_axis.model_sharding(plan.strategy, plan.num_models)
  keys = jax.jit(lambda: design.model_keys(plan.sweep), out_shardings=sharding)()
  init = one_model.init_fn(plan, model)
  state = jax.jit(jax.vmap(init), out_shardings=sharding)(keys['init'])
  if resume:
    state = checkpoint.restore_state(workdir, state, resume['saved_step'])
  knobs = {k: np.asarray(v) for k, v in plan.knobs.items()}
  knobs = model_axis.put_models(knobs, plan.strategy) if sharding else jax.device_put(knobs)
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
    self._order = jax.jit(self.order)

  def order(self, data_keys, epoch):
    """int32 [M, N]: each model's order of the training set in `epoch` (traceable: the
    scan loop calls it inside its compiled epoch, the python loop through jit)."""
    return one_model.epoch_permutations(data_keys, epoch, self.labels.shape[0])

  def arrays(self) -> tuple:
    """(images, labels) on device, shared by all models."""
    return self.images, self.labels

  def epoch(self, keys, epoch: int, first_step: int = 0) -> Iterator[tuple]:
    """(perms [M, N], images, labels) for each step of the epoch from `first_step`."""
    perms = self._order(keys['data'], epoch)
    for _ in range(first_step, self.plan.steps_per_epoch):
      yield perms, self.images, self.labels


class StreamedInput:
  """Host batches from a grain iterator, shared by all models. The next batch is sent to
  the device after the current step is dispatched, so host input overlaps compute.
  Batches do not cross epochs: after an epoch the iterator is at the next one's start, and
  between steps at the next step's batch (what a mid-epoch checkpoint saves). In a job of
  several processes each reads only `rows` of each global batch, the rows its devices
  hold (distributed.local_rows; None: all), and the global batch is made from the parts."""

  def __init__(self, plan, batches, rows: tuple[int, int] | None = None):
    self.plan, self.batches, self.rows = plan, batches, rows

  def epoch(self, keys, epoch: int, first_step: int = 0) -> Iterator[tuple]:
    del keys, epoch  # the pipeline sets the order and the position
    strategy, num_models = self.plan.strategy, self.plan.num_models
    sharding = model_axis.batch_sharding(strategy, num_models)
    size = self.plan.config.train.batch_size
    put = lambda b: (model_axis.put_batch((b['image'], b['label']), strategy, num_models)
                     if self.rows is None else distributed.from_local_rows(
                         (b['image'], b['label']), sharding, size))
    upcoming = put(next(self.batches))
    for step in range(first_step, self.plan.steps_per_epoch):
      yield (None, *upcoming)
      if step + 1 < self.plan.steps_per_epoch:
        upcoming = put(next(self.batches))


def make_input(plan, dataset, input_mode: str, workdir: str, resume):
  if input_mode == 'resident':
    return ResidentInput(plan, dataset)
  rows = distributed.local_rows(model_axis.batch_sharding(plan.strategy, plan.num_models),
                                plan.config.train.batch_size)
  if rows is not None and distributed.is_lead():
    print(f'streamed input: each process reads its rows of every batch of '
          f'{plan.config.train.batch_size} (process 0: rows {rows[0]}:{rows[1]})',
          file=sys.stderr)
  batches = modes.train_stream(plan.config, dataset, plan.config.train.epochs, rows)
  if resume:  # continues where its checkpoint left the batches
    batches = checkpoint.restore_batches(workdir, batches, resume['saved_step'])
  return StreamedInput(plan, batches, rows)


def make_evaluate(plan, model, images: np.ndarray, on_device: bool) -> Callable:
  """evaluate(state) -> int32 [M, N]: every model's class for each of `images`. on_device:
  the batches are put on device once (else sent a batch per call, as large sets need)."""
  predict = model_axis.lift_predict(one_model.make_predict(plan, model), plan.strategy,
                                    plan.config.train.chunk_size)
  batches = batch_for_eval(images, plan.config.train.eval_batch_size)
  if on_device:
    batches = model_axis.put_shared(batches, plan.strategy, plan.num_models)

  def evaluate(state):
    with device_memory.guard(plan, 'evaluating', 'resident' if on_device else 'streamed'):
      return distributed.to_host(predict(state, batches))[:, :len(images)]
  return evaluate


def batch_for_eval(images: np.ndarray, batch_size: int) -> np.ndarray:
  """uint8 [N, ...] -> [ceil(N / B), B, ...], zero-padded; predictions past N are dropped."""
  n = len(images)
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  padded = np.zeros((num_batches * batch_size,) + images.shape[1:], images.dtype)
  padded[:n] = images
  return padded.reshape(num_batches, batch_size, *images.shape[1:])


# ----------------------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------------------
def _announce(plan, dataset, input_mode: str, resume) -> None:
  if not distributed.is_lead():
    return
  sweep, model = plan.sweep, plan.config.model.name
  augment = list(plan.ops)
  print(f'{sweep.num_models} models ({len(sweep.values)} values of {sweep.name} x '
        f'{len(sweep.seeds)} seeds) on {dataset.name} ({dataset.num_train} train / '
        f'{len(dataset.test_labels)} test images, {dataset.num_classes} classes), '
        f'{model}, strategy {plan.strategy}, input {input_mode}, augment {augment}',
        file=sys.stderr)
  if resume:
    within = f', step {resume["step"]} of the next' if resume['step'] else ''
    print(f'resuming from the checkpoint after epoch {resume["epoch"]}{within}',
          file=sys.stderr)


def _write_config(workdir: str, plan, dataset, input_mode: str, policy: dict) -> None:
  if not distributed.is_lead():  # one process writes the run's files
    return
  resolved = plan.config.to_dict()
  resolved['resolved'] = dict(plan.resolved(), input_mode=input_mode,
                              host_malloc=hostmem.in_effect(), checkpoint=policy,
                              processes=jax.process_count(),
                              class_names=list(dataset.class_names),
                              tensorboard=bool(plan.config.train.tensorboard
                                               and summaries.available()),
                              versions=versions.installed())
  files.write_json(os.path.join(workdir, 'config.json'), resolved)


def _finish(workdir: str, plan, arrays) -> None:
  if not distributed.is_lead():
    return
  results.save_results(workdir, arrays)
  checkpoint.remove(workdir)  # the results hold what it was kept for
  summary = arrays['mean_accuracy'].mean(1)
  labels = arrays.get('value_names', [f'{v:g}' for v in plan.sweep.values])
  print('mean test accuracy per sweep value: ' + ', '.join(
      f'{v}: {100 * a:.1f}%' for v, a in zip(labels, summary)), file=sys.stderr)
  print(f'wrote {os.path.join(workdir, results.RESULTS_FILE)}', file=sys.stderr)


def run(config, workdir: str, overwrite: bool = False) -> dict[str, np.ndarray]:
  """Trains the sweep in `config`, writes results into `workdir`, returns the results.

  The lead process locks `workdir` for the run (train/study_dir.py): a second run there fails at
  once. A workdir holding the finished results (or a checkpoint) of another config is an
  error, unless `overwrite`, which deletes that study's files first.
  While it runs (in the main thread) SIGTERM and SIGINT raise interrupts.Interrupted: during
  training once the current step is done and a checkpoint is saved (interrupts.py).
  """
  study_dir.check(workdir)
  lead = distributed.is_lead()
  held = study_dir.lock(workdir) if lead else contextlib.nullcontext()
  untrained = _untrained_outputs(workdir) if lead else contextlib.nullcontext()
  with interrupts.Signals() as signals, held, untrained:
    return _run(config, workdir, signals, overwrite)


def _stat(path: str) -> tuple[int, int] | None:
  try:
    info = os.stat(path)
  except OSError:
    return None
  return info.st_ino, info.st_mtime_ns


def _never_trained(workdir: str, config_before) -> bool:
  """Whether this run wrote config.json and then trained nothing that is kept: no epoch in
  metrics.jsonl, no checkpoint, no results."""
  config_now = _stat(os.path.join(workdir, 'config.json'))
  metrics = os.path.join(workdir, 'metrics.jsonl')
  kept = [os.path.exists(os.path.join(workdir, name))
          for name in (results.RESULTS_FILE, checkpoint.CHECKPOINT_DIR)]
  logged = os.path.exists(metrics) and os.path.getsize(metrics) > 0
  return config_now not in (None, config_before) and not any(kept) and not logged


@contextlib.contextmanager
def _untrained_outputs(workdir: str) -> Iterator[None]:
  """A run that fails before it trained anything kept (a device out of memory at its
  first step, a signal before it) leaves no config.json, empty metrics.jsonl or event
  files without an epoch of its own. (config.json is written before training, so that a
  run that trains has it from its first checkpoint on.)"""
  before = _stat(os.path.join(workdir, 'config.json'))
  try:
    yield
  except BaseException:
    if _never_trained(workdir, before):
      for name in ('config.json', 'metrics.jsonl'):
        with contextlib.suppress(OSError):
          os.remove(os.path.join(workdir, name))
      shutil.rmtree(summaries.directory(workdir), ignore_errors=True)
    raise


def _resume_meta(config, workdir: str, overwrite: bool) -> dict | None:
  """The checkpoint's meta to resume from (None: start afresh), after the guard against
  another config's results; with `overwrite` another config's files are deleted."""
  lead = distributed.is_lead()  # the lead deletes; the others only check
  study_dir.guard_results(workdir, config, overwrite, lead)
  try:
    return checkpoint.read_meta(workdir, config)
  except ConfigError:
    if not overwrite:
      raise
  if lead:
    study_dir.clear(workdir)
  return None


def _run(config, workdir: str, signals: interrupts.Signals,
         overwrite: bool) -> dict[str, np.ndarray]:
  # Data: a bad config, a checkpoint of another config or a missing dataset stops the run
  # before anything is written.
  configs.validate(config)
  resume = _resume_meta(config, workdir, overwrite)
  # A resumed run keeps its input mode: the two modes order the data differently.
  dataset, input_mode = modes.load_dataset(
      config.data, resume['input_mode'] if resume else config.data.input_mode)
  data.check_test_classes(dataset)  # streamed: reads the test split, as evaluation will

  # Plan.
  dtype = jnp.bfloat16 if config.model.dtype == 'bfloat16' else jnp.float32
  model = create_model(config.model.name, dataset.num_classes, config.model.width, dtype)
  plan = make_plan(config, dataset, model)
  profiler = summaries.Profiler(config.train.profile_steps, plan.steps_per_epoch,
                                config.train.epochs, workdir, distributed.is_lead())
  os.makedirs(workdir, exist_ok=True)
  _write_config(workdir, plan, dataset, input_mode,
                interrupts.checkpoint_policy(config.train, plan.loop, signals))
  _announce(plan, dataset, input_mode, resume)
  with device_memory.guard(plan, 'training', input_mode):
    arrays = _train(plan, model, dataset, input_mode, workdir, signals, resume, profiler)
  _finish(workdir, plan, arrays)
  return arrays


def _train(plan, model, dataset, input_mode: str, workdir: str, signals: interrupts.Signals,
           resume: dict | None, profiler: summaries.Profiler) -> dict[str, np.ndarray]:
  """State, epochs and evaluation of a planned run: the arrays of results.npz."""
  config = plan.config
  # State.
  keys, state, knobs = initial_state(plan, model, workdir, resume)
  history = (History.from_json(resume) if resume
             else History(np.zeros(plan.num_models, bool)))
  run = epochs.LoopState(state, knobs, keys, history)
  source = make_input(plan, dataset, input_mode, workdir, resume)
  streamed = isinstance(source, StreamedInput)

  def save(epoch: int, step: int, state, epoch_steps: dict) -> None:
    meta = dict(history.to_json(epoch_steps), config=checkpoint.config_json(config),
                input_mode=input_mode)
    checkpoint.save(workdir, epoch, state, meta, batches=source.batches if streamed else None,
                    step=step, steps_per_epoch=plan.steps_per_epoch)

  # Epochs.
  evaluate = make_evaluate(plan, model, dataset.test_images, on_device=not streamed)
  checkpointer = interrupts.Checkpointer(config.train, plan.steps_per_epoch, plan.loop, save,
                                     signals, checkpoint.directory(workdir))
  start = (resume['epoch'], resume['step']) if resume else (0, 0)
  board = summaries.open_board(config, workdir, plan.sweep, dataset.class_names,
                               plan.arms and plan.arms['arms'], start[0], distributed.is_lead())
  with contextlib.closing(profiler), board or contextlib.nullcontext():
    last = epochs.train_epochs(run, plan, profiler.wrap(make_train_epoch(plan, model, source)),
                               evaluate, dataset, workdir, start, checkpointer, board)

  # Evaluation and results (the last epoch's evaluation already has the predictions).
  state = run.state
  predictions = last if last is not None else evaluate(state)
  val = None
  if dataset.val_images is not None:
    val = make_evaluate(plan, model, dataset.val_images, on_device=False)(state)
  arrays = results.assemble(plan.sweep, dataset, predictions, history, val,
                            plan.arms and plan.arms['arms'])
  if plan.prune:  # each model's fraction of zero prunable weights
    arrays['sparsity'] = plan.sweep.unflatten(distributed.to_host(
        jax.jit(jax.vmap(prune.measured_sparsity))(state['params'])))
  return arrays
