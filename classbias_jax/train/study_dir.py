"""One workdir, one study: the run's lock on its workdir, and the guard against writing
over the finished results of another config.

While a run lives, its lead process holds an exclusive `flock` on WORKDIR/.lock (which
names the holder: pid, host, start time); a second run in the same workdir fails at once
with one line naming it. The kernel drops the lock when the process dies, kill -9
included, so a stale .lock file never blocks a later run.

A workdir whose results.npz and config.json come from a config that differs in anything
that changes results (all fields but NEUTRAL_FIELDS) is refused unless the run is told
to overwrite (`--overwrite`), which first deletes that study's files (OUTPUTS).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from typing import Iterator

from classbias_jax import configs, files, results
from classbias_jax.errors import ConfigError, WriteError
from classbias_jax.train import checkpoint, summaries

LOCK_FILE = '.lock'
NEUTRAL_FIELDS = configs.NEUTRAL_FIELDS  # never change results (and the fingerprint)
# What a run, its report and its fix policy write into a workdir: everything derived from
# the study, so --overwrite deletes it all (a policy.json of the old sweep included).
OUTPUTS = (results.RESULTS_FILE, 'config.json', 'metrics.jsonl', 'analysis.json', 'report.md',
           'figures', configs.POLICY_FILE, checkpoint.CHECKPOINT_DIR, summaries.SUMMARIES_DIR)


def check(workdir: str) -> None:
  """ConfigError when `workdir` exists and is not a folder."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir {workdir} is a file, not a folder; give a folder '
                      '(it is created if missing)')


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      text = ' '.join(f.read().split())
  except (OSError, ValueError):  # a lock file that is not text: the holder is unknown
    text = ''
  return text or 'holder unknown'


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/.lock for the duration (creating the workdir, removed again if it is
  left empty); ConfigError naming the holder when another process holds it."""
  check(workdir)
  created = not os.path.isdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WriteError(f'cannot create the workdir {workdir}: {files.os_reason(e)}') from None
  path = os.path.join(workdir, LOCK_FILE)
  fd = _acquire(path, workdir)
  try:
    try:  # the holder's name is for people; a full disk must not stop the run here
      os.ftruncate(fd, 0)
      os.write(fd, f'pid {os.getpid()} on {socket.gethostname()} since '
                   f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
    except OSError:
      pass
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)  # still held: a waiting run then locks a fresh file (see _acquire)
    os.close(fd)
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # only when empty: a run stopped before writing anything


def _acquire(path: str, workdir: str) -> int:
  """An open descriptor of `path` holding its exclusive lock."""
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only workdir: the run's first write
      raise WriteError(f'cannot write in the workdir {workdir}: {files.os_reason(e)}; give '
                       'a workdir this user can write to') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise ConfigError(f'{workdir} is in use by another run ({_holder(path)}); wait for it '
                        'to finish, or use another workdir') from None
    # The holder removes the file before releasing it: a lock on a removed file is void.
    if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
      return fd
    os.close(fd)


def guard_results(workdir: str, config, overwrite: bool, lead: bool = True) -> None:
  """Refuses (ConfigError) a workdir holding finished results of another config; with
  `overwrite`, the lead process deletes that study's files instead. The same config
  passes untouched."""
  what = _foreign_results(workdir, config)
  if what is None:
    return
  if not overwrite:
    raise ConfigError(f'{workdir} holds the finished results of {what}; use a fresh '
                      'workdir, or pass --overwrite to replace them')
  if lead:
    clear(workdir)


def _foreign_results(workdir: str, config) -> str | None:
  """What makes the finished results in `workdir` another study's, or None (no results,
  or those of `config`)."""
  saved_path = os.path.join(workdir, 'config.json')
  if not (os.path.isfile(os.path.join(workdir, results.RESULTS_FILE))
          and os.path.isfile(saved_path)):
    return None
  try:
    with open(saved_path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    saved = None
  if not isinstance(saved, dict):
    return 'an unreadable config.json'
  saved, given = (configs.results_config(saved),
                  configs.results_config(checkpoint.config_json(config)))
  dump = lambda c: json.dumps(c, sort_keys=True)  # NaN never equals itself
  if dump(saved) == dump(given):
    return None
  fields = checkpoint.differing_fields(saved, given)
  return f'another config (differs in {", ".join(fields[:4])}{", ..." * (len(fields) > 4)})'


def clear(workdir: str) -> None:
  """Deletes the files of OUTPUTS from `workdir` (nothing else)."""
  for name in OUTPUTS:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
