"""When the epoch loop stops and saves: SIGTERM/SIGINT (`Signals`, `Interrupted`) and the
checkpoint rules (`Checkpointer`).

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

import gc
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from classbias_jax.train import distributed

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
