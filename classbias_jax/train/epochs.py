"""The epoch loop: steps, metrics.jsonl, progress, checkpoints and preemption.

Checkpoints (WORKDIR/checkpoint, checkpoint.py) are taken at step boundaries when any of
these rules fires; none of them changes what is computed, so results are the same with
or without them:
  train.checkpoint_every = k         after every k-th epoch
  train.checkpoint_every_steps = n   after every n-th step (counted over the whole run)
  train.checkpoint_minutes = t       at the first step boundary t minutes after the loop
                                     started or last saved (default 10; 0 = off)
No checkpoint follows the last epoch (the results follow). Under train.loop 'scan' an
epoch is one compiled call, so a step or time rule fires at the end of that epoch.

SIGTERM (preemption on TPU VMs, Colab, SLURM) or SIGINT (Ctrl-C) during training finishes
the current step (scan: the current epoch), saves a checkpoint there and raises
Interrupted, which main.py prints as one line and turns into exit code 128 + signal.
A signal before the first step stops at once (nothing new to save); later ones are
ignored, so a save is never cut short; one after the last epoch's checks lets the run
finish its evaluation and results.
"""
from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from classbias_jax import files
from classbias_jax.train import distributed, model_axis, one_model
from classbias_jax.train.history import History

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
  """A signal stopped the run; `code` = 128 + the signal number, the message one line.
  A BaseException, as KeyboardInterrupt, so no `except Exception` swallows it."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum, self.code = signum, 128 + signum


class Signals:
  """Catches SIGTERM and SIGINT while in use (a context manager; main thread only, and
  not a signal the process was started ignoring); the previous handlers come back on exit.
  Until `hold` is set a signal raises Interrupted at once; after, it is only recorded in
  `received` for the loop to act on at the next step boundary."""

  def __init__(self):
    self.received: int | None = None
    self.hold = False
    self._previous: dict[int, Any] = {}
    self._collecting = False  # a garbage collection is running (its callbacks, finalizers)

  def _gc_start(self, phase: str, info) -> None:
    if phase == 'start':
      self._collecting = True

  def _gc_stop(self, phase: str, info) -> None:
    if phase == 'stop':
      self._collecting = False

  def __enter__(self) -> 'Signals':
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
          self._previous[signum] = signal.signal(signum, self._handle)
      gc.callbacks.insert(0, self._gc_start)  # first at a collection's start, last at its end
      gc.callbacks.append(self._gc_stop)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    for callback in (self._gc_start, self._gc_stop):
      if callback in gc.callbacks:
        gc.callbacks.remove(callback)
    self._previous.clear()

  @property
  def caught(self) -> list[str]:
    return [signal.Signals(s).name for s in self._previous]

  def _handle(self, signum, frame) -> None:
    if self.received is None:
      self.received = signum
    if self.hold:
      return
    if self._collecting or _in_gc_callback(frame):
      # An exception raised inside a garbage collection (JAX's gc callback, a weakref
      # callback, a finalizer) is only printed, with a traceback, and lost: the signal is
      # sent again, to land after it.
      threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
      return
    raise Interrupted(signum, f'interrupted ({signal.Signals(signum).name}) before '
                      'training began, nothing saved; run the same command again')


def _in_gc_callback(frame) -> bool:
  """Whether `frame` runs inside one of gc.callbacks."""
  codes = {getattr(callback, '__code__', None) for callback in gc.callbacks}
  codes.discard(None)
  while frame is not None:
    if frame.f_code in codes:
      return True
    frame = frame.f_back
  return False


def checkpoint_policy(train, loop: str, signals: Signals) -> dict[str, Any]:
  """The checkpoint rules in effect (config.json's resolved.checkpoint)."""
  return {'every_epochs': train.checkpoint_every, 'every_steps': train.checkpoint_every_steps,
          'minutes': train.checkpoint_minutes,
          'saves_at': 'epoch ends' if loop == 'scan' else 'steps',
          'on_signals': signals.caught}


# Steps between the processes' votes on stopping or saving (several processes only).
AGREE_EVERY = 10


class Checkpointer:
  """Decides when the loop saves (module docstring) and saves: save_fn(epoch, step, state,
  epoch_steps) writes the checkpoint of `epoch` whole epochs and `step` steps of the next
  one, with that epoch's per-step metrics so far (name -> [step, M]; {} at an epoch end)."""

  def __init__(self, train, steps_per_epoch: int, loop: str, save_fn: Callable,
               signals: Signals, directory: str,
               clock: Callable[[], float] = time.monotonic):
    self.every, self.every_steps = train.checkpoint_every, train.checkpoint_every_steps
    self.minutes, self.epochs = train.checkpoint_minutes, train.epochs
    self.steps_per_epoch = steps_per_epoch
    self.save_fn, self.signals = save_fn, signals
    self.directory, self.clock = directory, clock
    self.last_save = clock()
    self.checked = 0  # steps done at the last check of the step rule

  def start(self, epoch: int, step: int) -> None:
    """The loop starts at (epoch, step): the rules count from here; signals are held."""
    self.checked, self.last_save = epoch * self.steps_per_epoch + step, self.clock()
    self.signals.hold = True

  def _due(self, done: int) -> bool:
    crossed = bool(self.every_steps) and done // self.every_steps > self.checked // self.every_steps
    self.checked = done
    late = bool(self.minutes) and self.clock() - self.last_save >= 60 * self.minutes
    return crossed or late

  def _save(self, epoch: int, step: int, state, per_step) -> None:
    epoch_steps = ({k: np.stack([distributed.to_host(m[k]) for m in per_step])
                    for k in per_step[0]} if step else {})
    self.save_fn(epoch, step, state, epoch_steps)
    self.last_save = self.clock()

  def _stop(self, where: str) -> Interrupted:
    # Another process may have been the one signalled: it stops this one too.
    received = self.signals.received or signal.SIGTERM
    name = signal.Signals(received).name
    return Interrupted(received, f'interrupted ({name}) {where}: checkpoint '
                       f'saved in {self.directory}; run the same command again to resume')

  def _decide(self, done: int) -> tuple[bool, bool]:
    """(stop, save): every process takes the same decision, or a save that all of them
    must join would hang. A signal to any process stops all; process 0's clock decides
    the time rule."""
    several = jax.process_count() > 1
    # The vote is a collective that waits for the steps in flight: held every
    # AGREE_EVERY steps (and at epoch ends), not every step, so dispatch stays ahead.
    if several and done % self.steps_per_epoch and done % AGREE_EVERY:
      return False, False
    due, signalled = self._due(done), self.signals.received is not None
    if several:
      votes = distributed.gather_flags([signalled, due])  # [processes, 2]
      signalled, due = bool(votes[:, 0].any()), bool(votes[0, 1])
    return signalled, due

  def at_step(self, epoch: int, step: int, state, per_step) -> None:
    """After `step` steps of epoch `epoch` (0-based), before the epoch's last step."""
    stop, due = self._decide(epoch * self.steps_per_epoch + step)
    if stop:
      self._save(epoch, step, state, per_step)
      raise self._stop(f'after step {step}/{self.steps_per_epoch} of epoch '
                       f'{epoch + 1}/{self.epochs}')
    if due:
      self._save(epoch, step, state, per_step)

  def at_epoch_end(self, epochs_done: int, state) -> None:
    """After an epoch is logged; `epochs_done` counts it."""
    stop, due = self._decide(epochs_done * self.steps_per_epoch)
    if stop:
      self._save(epochs_done, 0, state, None)
      raise self._stop(f'after epoch {epochs_done}/{self.epochs}')
    if epochs_done < self.epochs and (due or (self.every and epochs_done % self.every == 0)):
      self._save(epochs_done, 0, state, None)


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
