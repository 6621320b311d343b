"""TensorBoard summaries and profiler traces of a run, in WORKDIR/tensorboard.

    tensorboard --logdir WORKDIR/tensorboard

Summaries (`train.tensorboard`, on by default when the `tensorboard` extra is installed;
only the lead process writes them). A TensorBoard run is a folder; there is one per sweep
value and seed, and one for the value's mean over its seeds:

    WORKDIR/tensorboard/<value>/mean/        e.g. weight_decay=0.0005/mean
    WORKDIR/tensorboard/<value>/seed_<seed>/ e.g. weight_decay=0.0005/seed_3

so every chart overlays the sweep values (filter runs by `mean` or by one seed). The step
is the epoch (1-based, as in metrics.jsonl). Tags:

    train/loss, train/accuracy   every epoch: the means over the epoch's steps
    test/accuracy                at each evaluation (train.eval_every, and the last epoch)
    test_per_class/<c>_<name>    each class's test accuracy at each evaluation; the class
                                 index <c> (zero-padded) keeps the classes in order and
                                 apart when two share a name

Means over seeds leave out non-finite values (a diverged model's loss). Everything is
written from the host copies the loop already holds, after the epoch: no step waits for
it. metrics.jsonl stays the record that tools read; the event files are for watching. A
resumed run writes a START marker at its first epoch, from which TensorBoard drops the
older files' points, so a repeated epoch is shown once.

Profiles (`train.profile_steps = (first, count)`): jax.profiler traces the steps first,
..., first + count - 1 (counted from 0 over the whole run, across epochs) into
WORKDIR/tensorboard/profile, which TensorBoard's profile tab lists (the
`tensorboard-plugin-profile` package). The trace starts and stops at step boundaries
after waiting for the steps in flight; under train.loop 'scan' an epoch is one call, so
the trace covers the whole epochs from the first epoch boundary at or after step `first`.
"""
from __future__ import annotations

import itertools
import os
import socket
import sys
import time
import warnings
from typing import Callable

import jax
import numpy as np

from classbias_jax import results
from classbias_jax.errors import ConfigError

try:  # optional: the `tensorboard` extra; event files need no TensorFlow
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer.record_writer import RecordWriter
except ImportError:
  RecordWriter = None

SUMMARIES_DIR = 'tensorboard'
PROFILE_DIR = 'profile'
_BOARDS = itertools.count()  # Boards opened by this process: its event files' last name part


def available() -> bool:
  """Whether the writer's package (tensorboard) is installed."""
  return RecordWriter is not None


def directory(workdir: str) -> str:
  return os.path.join(workdir, SUMMARIES_DIR)


def run_names(sweep, value_names: list[str] | None = None) -> list[str]:
  """Folder name of each sweep value [V]: 'weight_decay=0.0005' (the shortest digits that
  give the value back, so two values never share a folder), or the arm's name."""
  if value_names is None:
    short = sweep.name.rsplit('.', 1)[-1]
    value_names = [f'{short}={float(v)!r}' for v in sweep.values]
  return [str(name).replace(os.sep, '_') for name in value_names]


def class_tags(class_names) -> list[str]:
  """'test_per_class/<c>_<name>' of each class, c zero-padded to the width of C - 1."""
  width = len(str(max(len(class_names) - 1, 0)))
  return [f'test_per_class/{c:0{width}d}_{name}' for c, name in enumerate(class_names)]


class Board:
  """The event files of one run (module docstring). models: (V, S), m = v * S + s."""

  def __init__(self, workdir: str, sweep, class_names, value_names=None, start_epoch: int = 0):
    self.shape = (len(sweep.values), len(sweep.seeds))
    self.tags = class_tags(class_names)
    self.writers: dict[tuple[int, int | None], RecordWriter] = {}
    # TensorBoard reads a run's files in name order: a later Board's files sort after.
    stamp = f'{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_BOARDS)}'
    for v, value in enumerate(run_names(sweep, value_names)):
      runs = [(None, 'mean')] + [(s, f'seed_{seed}') for s, seed in enumerate(sweep.seeds)]
      for s, run in runs:
        folder = os.path.join(directory(workdir), value, run)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'events.out.tfevents.{stamp}')
        self.writers[v, s] = RecordWriter(open(path, 'wb'))
    self._write_all(lambda v, s: event_pb2.Event(file_version='brain.Event:2'))
    if start_epoch:  # points of epochs > start_epoch from an earlier try are dropped
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      self._write_all(lambda v, s: event_pb2.Event(step=start_epoch + 1, session_log=start))

  def _write_all(self, make_event: Callable) -> None:
    now = time.time()
    for (v, s), writer in self.writers.items():
      event = make_event(v, s)
      event.wall_time = now
      writer.write(event.SerializeToString())
      writer.flush()

  def scalars(self, step: int, values: dict[str, np.ndarray]) -> None:
    """Writes tag -> float [M] at `step`: each model to its seed's run, the mean over a
    value's seeds (finite ones) to its mean run."""
    grids = {tag: np.asarray(x, np.float64).reshape(self.shape) for tag, x in values.items()}
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)  # all seeds non-finite: NaN
      means = {tag: np.nanmean(np.where(np.isfinite(g), g, np.nan), 1)
               for tag, g in grids.items()}

    def event(v, s):
      pick = (lambda tag: means[tag][v]) if s is None else (lambda tag: grids[tag][v, s])
      summary = summary_pb2.Summary(value=[
          summary_pb2.Summary.Value(tag=tag, simple_value=float(pick(tag))) for tag in grids])
      return event_pb2.Event(step=step, summary=summary)
    self._write_all(event)

  def epoch(self, epoch: int, metrics: dict[str, np.ndarray], predictions=None,
            labels=None) -> None:
    """After epoch `epoch` (1-based): metrics 'loss', 'accuracy' float [M] (host);
    predictions int [M, N] and labels int [N] when the epoch was evaluated."""
    values = {'train/loss': metrics['loss'], 'train/accuracy': metrics['accuracy']}
    if predictions is not None:
      predictions = np.asarray(predictions)
      values['test/accuracy'] = (predictions == labels).mean(1)  # [M]
      per_class = results.class_accuracy(predictions == labels, labels, len(self.tags))
      values.update(zip(self.tags, per_class.T))  # per_class [M, C]
    self.scalars(epoch, values)

  def __enter__(self) -> 'Board':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    for writer in self.writers.values():
      writer.close()
    self.writers = {}


def open_board(config, workdir: str, sweep, class_names, value_names=None,
               start_epoch: int = 0, lead: bool = True) -> Board | None:
  """The run's Board when train.tensorboard is on, this is the lead process and the
  writer's package is installed (else None, with a note when it is missing)."""
  if not (config.train.tensorboard and lead):
    return None
  if not available():
    print('note: no TensorBoard summaries: the tensorboard package is not installed '
          "(pip install 'classbias_jax[tensorboard]'; train.tensorboard=False hides this)",
          file=sys.stderr)
    return None
  return Board(workdir, sweep, class_names, value_names, start_epoch)


# ----------------------------------------------------------------------------------------
# Profiles.
# ----------------------------------------------------------------------------------------
class Profiler:
  """Traces train.profile_steps = (first, count) with jax.profiler (module docstring).
  `wrap` a train_epoch function (epochs.make_train_epoch); `close` stops a trace still
  running (a run that stopped inside it)."""

  def __init__(self, profile_steps, steps_per_epoch: int, epochs: int, workdir: str,
               lead: bool = True):
    """profile_steps: () or (first, count), as configs.validate accepts them."""
    self.first, self.count = tuple(profile_steps) or (None, 0)
    total = steps_per_epoch * epochs
    if self.count and self.first >= total:
      raise ConfigError(f'train.profile_steps starts at step {self.first}, but the run has '
                        f'{total} steps ({epochs} epochs of {steps_per_epoch})')
    self.steps_per_epoch, self.lead = steps_per_epoch, lead
    self.directory = os.path.join(directory(workdir), PROFILE_DIR)
    self.started: int | None = None  # the step the trace started at
    self.done = False

  def boundary(self, steps_done: int, state) -> None:
    """At a step boundary, `steps_done` steps into the run: starts or stops the trace."""
    if not self.count or self.done or not self.lead:  # the lead process traces its host
      return
    if self.started is None and steps_done >= self.first:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.directory)
      self.started = steps_done
    elif self.started is not None and steps_done >= self.started + self.count:
      jax.block_until_ready(state)
      self.close()
      print(f'\nprofiled steps {self.started}-{steps_done - 1} into {self.directory}',
            file=sys.stderr)

  def wrap(self, train_epoch: Callable) -> Callable:
    """train_epoch with boundary() before, between (python loop) and after its steps."""
    if not self.count:
      return train_epoch
    per_epoch = self.steps_per_epoch

    def profiled(state, knobs, keys, epoch, first_step=0, done=None, at_step=None):
      self.boundary(epoch * per_epoch + first_step, state)

      def between(epoch_, steps, state_, per_step):
        self.boundary(epoch_ * per_epoch + steps, state_)
        if at_step is not None:
          at_step(epoch_, steps, state_, per_step)
      state, metrics = train_epoch(state, knobs, keys, epoch, first_step, done, between)
      self.boundary((epoch + 1) * per_epoch, state)
      return state, metrics
    return profiled

  def close(self) -> None:
    if self.started is not None and not self.done:
      jax.profiler.stop_trace()
      self.done = True
