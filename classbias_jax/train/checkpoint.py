"""Resumable runs: the train state and the loop's progress at a step boundary, on disk.

An orbax CheckpointManager keeps one checkpoint, a composite of items:

    WORKDIR/checkpoint/step_NNNNNNNNN/   (NNN: training steps done, over all epochs)
      _CHECKPOINT_METADATA   orbax's record of the step (and commit_success.txt)
      state/     the train state, every leaf [M, ...] (StandardSave)
      meta/metadata          JSON (JsonSave): the run's config, the position ('epoch'
                 whole epochs and 'step' steps of the next one), and what the loop
                 collected so far (diverged flags, curves, the current epoch's per-step
                 metrics, the resolved input mode)
      batches/process_0-of-1.json   the grain iterator state, when the run streams and
                 save() was given the iterator (grain's CheckpointSave)

orbax writes a checkpoint into epoch_NNNNNN.orbax-checkpoint-tmp and renames it into place
once every item is written, so every epoch_* directory is whole: a process killed mid-save
leaves only the temporary directory, which loading ignores and the next save deletes.
save() returns once the rename is done (no background writes), and the older checkpoint
is deleted after it (max_to_keep=1). A run resumes only with the config that wrote the
checkpoint, up to the fields of CHECKPOINT_FIELDS, which only say when to save or what
to watch (trainer.run deletes the checkpoint after writing its results).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any

from classbias_jax.train import io_faults
from classbias_jax.errors import ConfigError

CHECKPOINT_DIR = 'checkpoint'
_PREFIX = 'step'
_DIGITS = 9
# Config fields that say when to save or what to watch (summaries.py), not what runs: a
# run may resume under other values.
CHECKPOINT_FIELDS = ('checkpoint_every', 'checkpoint_every_steps', 'checkpoint_minutes',
                     'tensorboard', 'profile_steps')
_STATE, _META, _BATCHES = 'state', 'meta', 'batches'


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
      max_to_keep=1, step_name_format=_name_format(), enable_async_checkpointing=False,
      create=write, cleanup_tmp_directories=write)
  manager = ocp.CheckpointManager(os.path.abspath(directory(workdir)), options=options)
  try:
    yield manager
  finally:
    manager.wait_until_finished()
    manager.close()


def _latest_step(workdir: str) -> int | None:
  if not os.path.isdir(directory(workdir)):
    return None
  steps = [m.step for m in _name_format().find_all(directory(workdir))]
  return max(steps) if steps else None


def latest(workdir: str) -> str | None:
  """Path of the newest complete checkpoint in WORKDIR/checkpoint, or None."""
  step = _latest_step(workdir)
  return None if step is None else os.path.join(directory(workdir),
                                                _name_format().build_name(step))


def read_meta(workdir: str, config) -> dict[str, Any] | None:
  """The meta item of the newest checkpoint, or None when there is none.

  Raises ConfigError (one line) when the checkpoint was written under another config:
  continuing it would mix two studies in one set of results.
  """
  step = _latest_step(workdir)
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
  return meta


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
  items = {_STATE: ocp.args.StandardSave(state),
           _META: ocp.args.JsonSave(dict(meta, epoch=epoch, step=step))}
  if batches is not None:
    import grain
    items[_BATCHES] = grain.checkpoint.CheckpointSave(batches)
  failures = io_faults.write_failures(directory(workdir), 'the checkpoint')
  with failures, _manager(workdir, write=True) as manager:
    # orbax skips a step not after the latest: a save of an earlier position replaces them.
    for old in manager.all_steps():
      if old >= number:
        manager.delete(old)
    if not manager.save(number, args=ocp.args.Composite(**items)):
      raise RuntimeError(f'orbax did not save step {number} in {directory(workdir)}')
  return latest(workdir)


def restore_state(workdir: str, like):
  """The newest checkpoint's train state, restored with the shapes, dtypes and shardings of
  `like` (a freshly initialised state of the same run)."""
  import jax
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  with _manager(workdir) as manager:
    return manager.restore(_latest_step(workdir), args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardRestore(abstract)}))[_STATE]


def restore_batches(workdir: str, batches):
  """Sets the grain iterator `batches` (fresh, of the same pipeline) to the position the
  newest checkpoint saved, and returns it. Reads the batches item, or else the
  'stream_state' entry of the meta item (a checkpoint whose meta carried the position)."""
  import orbax.checkpoint as ocp
  step = _latest_step(workdir)
  if step is not None and os.path.isdir(os.path.join(latest(workdir), _BATCHES)):
    import grain
    with _manager(workdir) as manager:
      return manager.restore(step, args=ocp.args.Composite(
          **{_BATCHES: grain.checkpoint.CheckpointRestore(batches)}))[_BATCHES]
  state = None if step is None else _read_meta_item(workdir, step).get('stream_state')
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
