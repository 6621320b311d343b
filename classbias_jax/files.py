"""Files that appear whole or not at all: every file but checkpoints is written to a
temporary name in the same folder, fsynced and renamed into place. An OSError (a full disk,
no permission) is a WriteError naming the path, and the temporary file is removed."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any

from classbias_jax.errors import WriteError


def atomic_write(path: str, write_fn, mode: str = 'wb') -> None:
  """Calls write_fn(file) on a temporary file beside `path`, then renames it to `path`.
  An OSError (a full disk, no permission) is a WriteError naming `path`; the temporary
  file is removed whatever fails."""
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=os.path.basename(path))
    with os.fdopen(fd, mode) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp makes the file private (0600); results are shared like any other file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError):
      raise WriteError(f'cannot write {path}: {os_reason(e)}') from None
    raise


def os_reason(e: OSError) -> str:
  """The reason of an OSError in words: 'no space left on device', 'permission denied'."""
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return 'no space left on device'
  return (e.strerror or str(e)).lower()


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically."""
  atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode='w')


def write_bytes(path: str, data: bytes) -> None:
  atomic_write(path, lambda f: f.write(data))
