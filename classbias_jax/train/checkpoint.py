"""Resumable runs: the train state and the loop's progress at a step boundary, on disk.

An orbax CheckpointManager keeps the two newest checkpoints, each a composite of items:

    WORKDIR/checkpoint/step_NNNNNNNNN/   (NNN: training steps done, over all epochs)
      _CHECKPOINT_METADATA   orbax's record of the step (and commit_success.txt)
      state/     the train state, every leaf [M, ...] (StandardSave)
      meta/metadata          JSON (JsonSave): the run's config, the position ('epoch'
                 whole epochs and 'step' steps of the next one), and what the loop
                 collected so far (diverged flags, curves, the current epoch's per-step
                 metrics, the resolved input mode)
      batches/process_0-of-1.json   the grain iterator state, when the run streams and
                 save() was given the iterator (grain's CheckpointSave)
      files.json the size in bytes of every file above, written once orbax is done

orbax writes a checkpoint into step_NNN.orbax-checkpoint-tmp and renames it into place
once every item is written, so a process killed mid-save leaves only the temporary
directory, which loading ignores and the next save deletes. save() returns once the
rename is done and files.json is written (no background writes); the third-newest
checkpoint is deleted after it (max_to_keep=2).

A checkpoint is used only when it is whole: files.json lists every file, each of the size
it had when written, and the meta item reads (`damage`). A damaged one (a truncated or
missing file, a lost files.json) is passed over for the one before it, or the run starts
afresh when none is whole; read_meta says which in one line. The check reads no array, so
every process of a job takes the same decision from the same files. It sees sizes, not
contents (orbax keeps no checksums either): an array file whose bytes changed in place
passes it, and restore_state then fails in one line (CheckpointError, saying what to
delete) or, where the changed bytes still decode, restores wrong values. A run resumes only
with the config that wrote the checkpoint, up to the fields of CHECKPOINT_FIELDS, which
only say when to save or what to watch (trainer.run deletes the checkpoint after
writing its results).

Several processes: every process calls save() and restore_state() together. Leaves that
live on one process's devices only (every strategy but 'shard' and 'mesh' keeps the whole
state on each process, computed alike) are saved as numpy arrays, written by process 0
(orbax's rule for numpy), and restored as numpy and put back where `like` lives; leaves
laid over the devices of all processes are written and read shard by shard.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np

from classbias_jax import files
from classbias_jax.errors import CheckpointError, ConfigError
from classbias_jax.train import io_faults

CHECKPOINT_DIR = 'checkpoint'
_PREFIX = 'step'
_DIGITS = 9
# Config fields that say when to save or what to watch (summaries.py), or how long to wait
# for partner processes, not what runs: a run may resume under other values.
CHECKPOINT_FIELDS = ('checkpoint_every', 'checkpoint_every_steps', 'checkpoint_minutes',
                     'tensorboard', 'profile_steps', 'partner_timeout_s')
_STATE, _META, _BATCHES = 'state', 'meta', 'batches'
FILE_LIST = 'files.json'
KEEP = 2  # checkpoints kept: a damaged newest one leaves the one before it
_STEP_DIR = re.compile(rf'{_PREFIX}_(\d{{{_DIGITS}}})')


def directory(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def config_json(config) -> Any:
  """The config as plain JSON data (tuples become lists), as the meta item stores it."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True))


def _name_format():
  import orbax.checkpoint as ocp
  return ocp.step.standard_name_format(step_prefix=_PREFIX, step_format_fixed_length=_DIGITS)


@contextlib.contextmanager
def _manager(workdir: str, write: bool = False):
  """A CheckpointManager of WORKDIR/checkpoint; only a writing one creates the directory
  and removes temporary directories left by a killed save."""
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(
      max_to_keep=KEEP, step_name_format=_name_format(), enable_async_checkpointing=False,
      create=write, cleanup_tmp_directories=write)
  manager = ocp.CheckpointManager(os.path.abspath(directory(workdir)), options=options)
  try:
    yield manager
  finally:
    manager.wait_until_finished()
    manager.close()


def step_path(workdir: str, step: int) -> str:
  return os.path.join(directory(workdir), f'{_PREFIX}_{step:0{_DIGITS}d}')


def _steps(workdir: str) -> list[int]:
  """Steps of the checkpoint folders in WORKDIR/checkpoint, newest first (whole or not;
  orbax's temporary folders excluded)."""
  try:
    names = os.listdir(directory(workdir))
  except OSError:
    return []
  found = [_STEP_DIR.fullmatch(name) for name in names]
  return sorted((int(m[1]) for m in found if m), reverse=True)


def damage(workdir: str, step: int, read: bool = True) -> str | None:
  """What is wrong with checkpoint `step` (a phrase), or None when it is whole: every file
  of its files.json there with its size, and (`read`) its meta item readable."""
  path = step_path(workdir, step)
  try:
    with open(os.path.join(path, FILE_LIST)) as f:
      sizes = json.load(f)
  except FileNotFoundError:
    return f'{FILE_LIST} is missing'
  except (OSError, ValueError):
    return f'{FILE_LIST} is unreadable'
  if not isinstance(sizes, dict):
    return f'{FILE_LIST} is unreadable'
  for name, size in sorted(sizes.items()):
    try:
      actual = os.path.getsize(os.path.join(path, name))
    except OSError:
      return f'{name} is missing'
    if actual != size:
      return f'{name} has {actual} of its {size} bytes'
  if not read:
    return None
  try:
    _read_meta_item(workdir, step)
  except Exception as e:  # noqa: BLE001 (whatever orbax raises on a bad file)
    return f'its meta item is unreadable ({type(e).__name__})'
  return None


def _newest_whole(workdir: str, below: int | None = None,
                  read: bool = True) -> tuple[int | None, list[str]]:
  """(the newest whole step under `below`, or None; 'step_N: what is wrong' for each
  damaged step newer than it). read: also read each meta item (damage)."""
  damaged = []
  for step in _steps(workdir):
    if below is not None and step >= below:
      continue
    wrong = damage(workdir, step, read)
    if wrong is None:
      return step, damaged
    damaged.append(f'{os.path.basename(step_path(workdir, step))}: {wrong}')
  return None, damaged


def latest(workdir: str) -> str | None:
  """Path of the newest checkpoint in WORKDIR/checkpoint whose files are whole, or None."""
  step = _newest_whole(workdir, read=False)[0]
  return None if step is None else step_path(workdir, step)


def read_meta(workdir: str, config, below: int | None = None) -> dict[str, Any] | None:
  """The meta item of the newest whole checkpoint (of a step under `below`, when given),
  with 'saved_step' its step, or None when there is none. Damaged checkpoints passed over
  are named in one line on stderr, with what the run does instead.

  Raises ConfigError (one line) when the checkpoint was written under another config:
  continuing it would mix two studies in one set of results.
  """
  step, damaged = _newest_whole(workdir, below)
  if damaged and jax.process_index() == 0:
    instead = ('starting afresh' if step is None else
               f'resuming from {os.path.basename(step_path(workdir, step))} instead')
    print(f'warning: damaged checkpoint in {directory(workdir)} ({"; ".join(damaged)}): '
          f'{instead}', file=sys.stderr)
  if step is None:
    return None
  meta = _read_meta_item(workdir, step)
  meta.setdefault('step', 0)
  # Compared as canonical JSON text: NaN (an unset per-class knob) never equals itself.
  dump = lambda c: json.dumps(c, sort_keys=True)
  saved, given = _identity(meta['config']), _identity(config_json(config))
  if dump(saved) != dump(given):
    fields = differing_fields(saved, given)
    raise ConfigError(f'{directory(workdir)} holds a checkpoint of a run with another config '
                      f'(differs in {", ".join(fields[:4])}{", ..." * (len(fields) > 4)}); '
                      'use a fresh workdir, or pass --overwrite to start over')
  return dict(meta, saved_step=step)


def _identity(config: dict) -> dict:
  """The JSON config without the fields that only say when to save or what to watch."""
  train = {k: v for k, v in config.get('train', {}).items() if k not in CHECKPOINT_FIELDS}
  return dict(config, train=train)


def differing_fields(a: dict, b: dict, prefix: str = '') -> list[str]:
  """Dotted names of the fields where two JSON configs differ."""
  out = []
  for key in sorted(set(a) | set(b)):
    x, y = a.get(key), b.get(key)
    if isinstance(x, dict) and isinstance(y, dict):
      out += differing_fields(x, y, f'{prefix}{key}.')
    elif json.dumps(x) != json.dumps(y):
      out.append(prefix + key)
  return out


def _several_processes() -> bool:
  return jax.process_count() > 1


def _host_local(x) -> bool:
  """Whether leaf `x` of a job of several processes lives on this process's devices only."""
  return _several_processes() and isinstance(x, jax.Array) and x.is_fully_addressable


def _savable(state):
  """`state` as orbax can write it from every process: host-local leaves as numpy."""
  return jax.tree.map(lambda x: np.asarray(x) if _host_local(x) else x, state)


def save(workdir: str, epoch: int, state, meta: dict[str, Any], batches=None, step: int = 0,
         steps_per_epoch: int = 1) -> str:
  """Writes the checkpoint of `epoch` whole epochs and `step` steps of the next atomically
  (see module docstring); returns its path.

  state: the train state pytree (leaves [M, ...]); meta: JSON-serialisable, must hold
  'config' (config_json) for read_meta. batches: the streamed run's grain iterator, whose
  position is saved as its own item (restore_batches); None when the run does not stream.
  """
  import orbax.checkpoint as ocp
  if not 0 <= step < steps_per_epoch:
    raise ValueError(f'step {step} is outside an epoch of {steps_per_epoch} steps')
  number = epoch * steps_per_epoch + step
  items = {_STATE: ocp.args.StandardSave(_savable(state)),
           _META: ocp.args.JsonSave(dict(meta, epoch=epoch, step=step))}
  if batches is not None:
    import grain
    items[_BATCHES] = grain.checkpoint.CheckpointSave(batches)
  failures = io_faults.write_failures(directory(workdir), 'the checkpoint')
  with failures:
    with _manager(workdir, write=True) as manager:
      _delete_from(workdir, number, manager)
      if not manager.save(number, args=ocp.args.Composite(**items)):
        raise RuntimeError(f'orbax did not save step {number} in {directory(workdir)}')
    if jax.process_index() == 0:
      _write_file_list(step_path(workdir, number))
  return step_path(workdir, number)


def _delete_from(workdir: str, number: int, manager) -> None:
  """Deletes the checkpoints of steps >= `number`: orbax skips a step not after the
  latest, so a save of an earlier position (a run resumed from before them) replaces
  them; damaged ones orbax does not list go too (by process 0)."""
  for old in manager.all_steps():
    if old >= number:
      manager.delete(old)
  if jax.process_index() == 0:
    for old in _steps(workdir):
      if old >= number:
        shutil.rmtree(step_path(workdir, old), ignore_errors=True)


def _write_file_list(path: str) -> None:
  """PATH/files.json: {relative path: bytes} of every file under PATH (the whole check)."""
  sizes = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      sizes[os.path.relpath(full, path)] = os.path.getsize(full)
  files.write_json(os.path.join(path, FILE_LIST), sizes)


def restore_state(workdir: str, like, step: int | None = None):
  """Checkpoint `step`'s train state (None: the newest whole one's), restored with the
  shapes, dtypes and placement of `like` (a freshly initialised state of the same run)."""
  import orbax.checkpoint as ocp
  step = _newest_whole(workdir)[0] if step is None else step
  local = lambda x: np.zeros(x.shape, x.dtype) if _host_local(x) else (
      ocp.utils.to_shape_dtype_struct(x))
  try:
    with _manager(workdir) as manager:
      restored = manager.restore(step, args=ocp.args.Composite(
          **{_STATE: ocp.args.StandardRestore(jax.tree.map(local, like))}))[_STATE]
  except Exception as e:  # noqa: BLE001 (whatever orbax or tensorstore raise on bad bytes)
    path = step_path(workdir, step)
    raise CheckpointError(
        f'{path} cannot be restored ({type(e).__name__}: {" ".join(str(e).split())[:160]}); '
        f'delete that folder to resume from the checkpoint before it, or '
        f'{directory(workdir)} to start afresh') from None
  return jax.tree.map(lambda x, ref: jax.device_put(x, ref.sharding) if _host_local(ref)
                      else x, restored, like)


def restore_batches(workdir: str, batches, step: int | None = None):
  """Sets the grain iterator `batches` (fresh, of the same pipeline) to the position
  checkpoint `step` (None: the newest whole one) saved, and returns it. Reads the batches item, or else the
  'stream_state' entry of the meta item (a checkpoint whose meta carried the position)."""
  import orbax.checkpoint as ocp
  step = _newest_whole(workdir)[0] if step is None else step
  if step is None:
    raise ValueError(f'{directory(workdir)} holds no position of the input stream')
  if os.path.isdir(os.path.join(step_path(workdir, step), _BATCHES)):
    import grain
    with _manager(workdir) as manager:
      return manager.restore(step, args=ocp.args.Composite(
          **{_BATCHES: grain.checkpoint.CheckpointRestore(batches)}))[_BATCHES]
  state = _read_meta_item(workdir, step).get('stream_state')
  if state is None:
    raise ValueError(f'{directory(workdir)} holds no position of the input stream')
  batches.set_state(state)
  return batches


def _read_meta_item(workdir: str, step: int) -> dict[str, Any]:
  import orbax.checkpoint as ocp
  with _manager(workdir) as manager:
    return manager.restore(step, args=ocp.args.Composite(
        **{_META: ocp.args.JsonRestore()}))[_META]


def remove(workdir: str) -> None:
  """Deletes WORKDIR/checkpoint (a finished run's results make it redundant)."""
  shutil.rmtree(directory(workdir), ignore_errors=True)
