"""Failed writes as one line: a checkpoint save that hits a full disk (or another OS
error) becomes one WriteError, with no temporary folder left and none of the tracebacks
that orbax's and tensorstore's threads print as each of their writes fails."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import sys
import threading

from classbias_jax.errors import WriteError
from classbias_jax.files import os_reason

_LOGGERS = ('asyncio', 'absl')


def io_reason(error: BaseException | None) -> str | None:
  """'no space left on device' (or another OS reason) when `error` or its cause is an
  I/O failure: an OSError, or tensorstore's message with an os_error_code; else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError):
      return os_reason(error)
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
      return os_reason(OSError(int(code[1]), os.strerror(int(code[1]))))
    error = error.__cause__ or error.__context__
  return None


class _Echoes(logging.Filter):
  """Drops the echoes of failed writes: log records of I/O errors or naming `folder`,
  and (as sys.unraisablehook) tensorstore's 'Event loop is closed' callbacks."""

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder
    self.previous = sys.unraisablehook

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return io_reason(error) is None and self.folder not in record.getMessage()

  def unraisable(self, unraisable) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      self.previous(unraisable)

  def install(self) -> None:
    for name in _LOGGERS:
      logging.getLogger(name).addFilter(self)
    sys.unraisablehook = self.unraisable

  def remove(self) -> None:
    for name in _LOGGERS:
      logging.getLogger(name).removeFilter(self)
    if sys.unraisablehook == self.unraisable:
      sys.unraisablehook = self.previous


@contextlib.contextmanager
def write_failures(folder: str, what: str):
  """Turns an I/O failure inside into WriteError('cannot write {what} in {folder}: ...'),
  after waiting for the threads it started and removing the temporary folders in
  `folder` (and `folder` itself when left empty). What is printed meanwhile is held back
  and shown only when the block succeeds or fails for another reason; after an I/O
  failure the echoes that still come later (at exit) stay dropped."""
  echoes = _Echoes(os.path.abspath(folder))
  echoes.install()
  with _held_stderr() as held:
    before = set(threading.enumerate())
    try:
      yield
    except Exception as e:
      reason = io_reason(e)
      for thread in set(threading.enumerate()) - before:  # orbax's writers, still failing
        if not thread.daemon:
          with contextlib.suppress(Exception):  # orbax's threads re-raise from join
            thread.join(timeout=30)
      gc.collect()  # asyncio logs its abandoned futures as they are collected
      _remove_temporary(folder)
      if reason is None:
        echoes.remove()
        raise
      held.clear()
      raise WriteError(f'cannot write {what} in {folder}: {reason}') from None
  echoes.remove()


def _remove_temporary(folder: str) -> None:
  """Deletes orbax's temporary folders in `folder`, and `folder` when left empty."""
  if not os.path.isdir(folder):
    return
  for name in os.listdir(folder):
    if '.orbax-checkpoint-tmp' in name:
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
  with contextlib.suppress(OSError):
    os.rmdir(folder)


@contextlib.contextmanager
def _held_stderr():
  """Sends file descriptor 2 into memory (a list of bytes chunks, yielded) for the
  duration; what is left in the list is written to the real stderr at the end."""
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  saved = os.dup(2)
  chunks: list[bytes] = []

  def drain():
    while chunk := os.read(read_end, 1 << 16):
      chunks.append(chunk)

  reader = threading.Thread(target=drain, daemon=True)
  reader.start()
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield chunks
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees its end
    os.close(saved)
    reader.join()
    os.close(read_end)
    if chunks:
      os.write(2, b''.join(chunks))
