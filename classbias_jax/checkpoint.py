"""Resumable runs: the train state and the loop's progress at an epoch end, on disk.

    WORKDIR/checkpoint/epoch_NNNNNN/
      state/     the train state, every leaf [M, ...], by orbax's StandardCheckpointer
      meta.json  the run's config, the epoch, and what the loop collected so far (diverged
                 flags, curves, the resolved input mode and, when streamed, the grain
                 iterator state)

A checkpoint is written under a temporary name in WORKDIR/checkpoint/ and renamed into
place once complete, so every epoch_* directory is whole: a crash mid-save leaves only a
temporary directory, which loading ignores and the next save deletes. Older epochs are
deleted once a newer one is in place. A run resumes only with the config that wrote the
checkpoint (train.run deletes the checkpoint after writing its results).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from classbias_jax.errors import ConfigError

CHECKPOINT_DIR = 'checkpoint'
_PREFIX = 'epoch_'
_TEMP_PREFIX = '.tmp-'


def directory(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINT_DIR)


def config_json(config) -> Any:
  """The config as plain JSON data (tuples become lists), as meta.json stores it."""
  return json.loads(json.dumps(config.to_dict(), sort_keys=True))


def latest(workdir: str) -> str | None:
  """Path of the newest complete checkpoint in WORKDIR/checkpoint, or None."""
  root = directory(workdir)
  if not os.path.isdir(root):
    return None
  names = sorted(n for n in os.listdir(root) if n.startswith(_PREFIX))
  return os.path.join(root, names[-1]) if names else None


def read_meta(workdir: str, config) -> dict[str, Any] | None:
  """meta.json of the newest checkpoint, or None when there is none.

  Raises ConfigError (one line) when the checkpoint was written under another config:
  continuing it would mix two studies in one set of results.
  """
  path = latest(workdir)
  if path is None:
    return None
  with open(os.path.join(path, 'meta.json')) as f:
    meta = json.load(f)
  # Compared as canonical JSON text: NaN (an unset per-class knob) never equals itself.
  dump = lambda c: json.dumps(c, sort_keys=True)
  if dump(meta['config']) != dump(config_json(config)):
    fields = differing_fields(meta['config'], config_json(config))
    raise ConfigError(f'{directory(workdir)} holds a checkpoint of a run with another config '
                      f'(differs in {", ".join(fields[:4])}{", ..." * (len(fields) > 4)}); '
                      'use a fresh workdir, or delete that checkpoint to start over')
  return meta


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


def save(workdir: str, epoch: int, state, meta: dict[str, Any]) -> str:
  """Writes the checkpoint of `epoch` atomically (see module docstring); returns its path.

  state: the train state pytree (leaves [M, ...]); meta: JSON-serialisable, must hold
  'config' (config_json) for read_meta.
  """
  import orbax.checkpoint as ocp
  root = directory(workdir)
  os.makedirs(root, exist_ok=True)
  for name in os.listdir(root):  # left by a save that crashed
    if name.startswith(_TEMP_PREFIX):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  final = os.path.join(root, f'{_PREFIX}{epoch:06d}')
  tmp = tempfile.mkdtemp(dir=root, prefix=_TEMP_PREFIX)
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(os.path.abspath(tmp), 'state'), state)
    checkpointer.wait_until_finished()  # orbax writes in a background thread
    checkpointer.close()
    _write_json(os.path.join(tmp, 'meta.json'), dict(meta, epoch=epoch))
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  for name in os.listdir(root):
    if name.startswith(_PREFIX) and os.path.join(root, name) != final:
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)
  return final


def restore_state(workdir: str, like):
  """The newest checkpoint's train state, restored with the shapes, dtypes and shardings of
  `like` (a freshly initialised state of the same run)."""
  import jax
  import orbax.checkpoint as ocp
  path = latest(workdir)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore(os.path.join(os.path.abspath(path), 'state'), abstract)
  finally:
    checkpointer.close()


def remove(workdir: str) -> None:
  """Deletes WORKDIR/checkpoint (a finished run's results make it redundant)."""
  shutil.rmtree(directory(workdir), ignore_errors=True)


def _write_json(path: str, obj) -> None:
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1)
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
  # Makes the rename itself durable, not only the files it moved.
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
