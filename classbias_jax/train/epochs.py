"""The epoch loop: steps, metrics.jsonl, progress; it saves and stops by the rules of
interrupts.py (checkpoints, SIGTERM/SIGINT)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax import files
from classbias_jax.train import distributed, model_axis, one_model
from classbias_jax.train.history import History
from classbias_jax.train.interrupts import Checkpointer

# ----------------------------------------------------------------------------------------
# One epoch.
# ----------------------------------------------------------------------------------------
def _summarise(metrics):  # per-step metrics [steps, M] -> epoch means [M]
  return {'loss': metrics['loss'].mean(0), 'accuracy': metrics['accuracy'].mean(0),
          'finite': metrics['finite'].all(0)}


def make_train_epoch(plan, model, source) -> Callable:
  """train_epoch(state, knobs, keys, epoch, first_step=0, done=None, at_step=None) ->
  (state, metrics float32 [M] 'loss' and 'accuracy' means over the epoch's steps, bool [M]
  'finite').

  loop 'python': one compiled call per step (XLA:CPU runs a rolled `lax.scan` of a conv
  net many times slower than the same steps dispatched one by one); it may start at
  `first_step` with the per-step metrics `done` of the steps before ({name: [k, M]}), and
  calls at_step(epoch, steps_done, state, per_step) between steps. 'scan' (resident
  input): the whole epoch is one compiled call; an epoch started inside (a checkpoint of
  the python loop, resumed where 'auto' resolves to scan) finishes step by step.
  """
  train_step = model_axis.lift_train_step(one_model.make_train_step(plan, model),
                                          plan.strategy, plan.config.train.chunk_size)
  if plan.loop != 'scan':
    return _python_epoch(plan, train_step, source)
  steps = plan.steps_per_epoch

  def scan_epoch(state, knobs, keys, epoch, images, labels):
    perms = source.order(keys['data'], epoch)  # the python loop's order, traced here
    inputs = one_model.ModelInputs(knobs, keys['aug'], perms)
    body = lambda state, step: train_step(state, inputs,
                                          one_model.Batch(images, labels, epoch, step))
    state, metrics = jax.lax.scan(body, state, jnp.arange(steps))
    return state, _summarise(metrics)
  scanned = jax.jit(scan_epoch, donate_argnums=(0,))

  def whole_epoch(state, knobs, keys, epoch, first_step=0, done=None, at_step=None):
    if first_step:
      return _python_epoch(plan, train_step, source)(state, knobs, keys, epoch, first_step,
                                                     done)
    return scanned(state, knobs, keys, epoch, *source.arrays())
  return whole_epoch


def _python_epoch(plan, train_step, source) -> Callable:
  """make_train_epoch's loop 'python': a compiled call per step."""
  steps = plan.steps_per_epoch
  step_jit = model_axis.jit(train_step, plan.strategy, donate_argnums=(0,))

  def python_epoch(state, knobs, keys, epoch, first_step=0, done=None, at_step=None):
    per_step = [{k: jnp.asarray(v[i]) for k, v in done.items()} for i in range(first_step)]
    batches = source.epoch(keys, epoch, first_step)
    for step, (perms, images, labels) in enumerate(batches, start=first_step):
      state, metrics = step_jit(state, one_model.ModelInputs(knobs, keys['aug'], perms),
                                one_model.Batch(images, labels, jnp.int32(epoch),
                                                jnp.int32(step)))
      per_step.append(metrics)
      if at_step is not None and step + 1 < steps:
        at_step(epoch, step + 1, state, per_step)
    return state, _summarise(jax.tree.map(lambda *xs: jnp.stack(xs), *per_step))

  return python_epoch


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
  with open(path, errors='replace') as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if _epoch(line) is not None and _epoch(line) <= epochs_done]
  damaged = sum(_epoch(line) is None for line in lines)
  if damaged:  # a line cut short by a crash: the epochs after the checkpoint come again
    print(f'{path}: dropped {damaged} damaged line{"s" * (damaged > 1)}', file=sys.stderr)
  files.write_bytes(path, ''.join(kept).encode())


def _epoch(line: str) -> int | None:
  """The epoch of a metrics.jsonl record, None when the line is not one."""
  try:
    epoch = json.loads(line)['epoch']
  except (ValueError, TypeError, KeyError):
    return None
  return epoch if isinstance(epoch, int) else None


def _record_epoch(history: History, epoch: int, metrics, seconds: float) -> dict:
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
# The epochs.
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopState:
  """What the epoch loop reads and owns: it replaces `state` after each epoch and records
  into `history`; knobs and keys are read only."""
  state: Any  # the train state, leaves [M, ...]
  knobs: dict  # short name -> [M] or [M, C]
  keys: dict  # 'init', 'data', 'aug' -> [M] keys
  history: History


def train_epochs(run: LoopState, plan, train_epoch, evaluate, dataset,
                 workdir: str, start: tuple[int, int],
                 checkpointer: Checkpointer, board=None) -> np.ndarray | None:
  """Trains from `start` = (epoch, step) to the last epoch, logs metrics.jsonl, evaluates
  every train.eval_every epochs, checkpoints as `checkpointer` decides, and hands each
  epoch's host metrics to `board` (summaries.Board; None: no summaries); `run.state` and
  `run.history` are updated. A resumed epoch starts from the per-step metrics its
  checkpoint kept (history.epoch_steps). Returns the last epoch's test
  predictions when that epoch was evaluated."""
  train = plan.config.train
  history, last = run.history, None
  lead = distributed.is_lead()  # one process logs and shows progress
  progress = Progress(train.epochs, plan.num_models, first_epoch=start[0],
                      stream=sys.stderr if lead else io.StringIO())
  metrics_path = os.path.join(workdir, 'metrics.jsonl') if lead else os.devnull
  if lead:
    truncate_metrics(metrics_path, start[0])
  checkpointer.start(*start)
  with open(metrics_path, 'a' if start[0] else 'w') as log:
    for epoch in range(start[0], train.epochs):
      t0 = time.time()
      first = start[1] if epoch == start[0] else 0
      run.state, metrics = train_epoch(run.state, run.knobs, run.keys, epoch, first,
                                       history.epoch_steps, checkpointer.at_step)
      history.epoch_steps = {}
      metrics = distributed.to_host(metrics)
      record = _record_epoch(history, epoch, metrics, time.time() - t0)
      extra, last = '', None
      if train.eval_every and ((epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs):
        last = evaluate(run.state)
        extra = _evaluate_epoch(history, record, epoch, last, dataset.test_labels)
      log.write(json.dumps(record) + '\n')
      log.flush()
      if board is not None:
        board.epoch(epoch + 1, metrics, last, dataset.test_labels)
      ok = ~history.diverged if (~history.diverged).any() else np.ones_like(history.diverged)
      progress.update(epoch, float(np.mean(metrics['loss'][ok])),
                      float(np.mean(metrics['accuracy'][ok])), extra)
      checkpointer.at_epoch_end(epoch + 1, run.state)
  return last
