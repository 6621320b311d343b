"""The command line of main.py around absl's app.run: errors while flags are parsed and
the config file is loaded (a missing file, a bad `file.py:arg`, an unknown
`--config.x.y`) and Ctrl-C before training are one line on stderr, never a traceback."""
from __future__ import annotations

import errno
import os
import signal
import sys

from absl import app, flags

from classbias_jax.errors import UserError

# A signal outside the training loop (which saves a checkpoint on its own; loop.Signals).
INTERRUPTED = 'interrupted ({}) before training began, nothing saved; run the same command again'


def one_line(text: str) -> str:
  return ' '.join(str(text).split())


def _config_flag():
  return flags.FLAGS['config'] if 'config' in flags.FLAGS else None


def _load_error(error: Exception, argv: list[str]) -> str:
  """The one-line message of an error raised while the config file was loaded."""
  if isinstance(error, flags.Error):
    lines = [line for line in str(error).splitlines() if line.strip()]
    # A TypeError or ValueError of the config file comes with its traceback: keep its end.
    return one_line(lines[0] + (f' {lines[-1]}' if len(lines) > 1 else ''))
  if isinstance(error, UserError):
    return one_line(error)
  if isinstance(error, (AttributeError, KeyError)):  # an override of an unknown field
    key = str(error).strip('\'"')
    for arg in argv[1:]:
      name = arg.split('=', 1)[0].lstrip('-')
      if name.startswith('config.') and key in name.split('.'):
        return f'--{name}: no such field in the config'
  if isinstance(error, OSError):
    flag = _config_flag()
    path = getattr(flag, 'config_filename', None) if flag is not None else None
    if path and not os.path.isfile(path):
      return f'--config: no such file {path}'
    return f'--config {path}: cannot load it: {one_line(error.__cause__ or error)}'
  return f'cannot load the config: {type(error).__name__}: {one_line(error)}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; any error while the config loads exits with one line."""
  try:
    args = flags.FLAGS(argv)
    flag = _config_flag()
    if flag is not None and flag.value is not None:
      getattr(flag.value, 'keys')  # a config that failed to load raises only when used
    return args
  except Exception as e:  # noqa: BLE001 (whatever the config file raises)
    sys.exit(f'error: {_load_error(e, argv)}')


def _interrupted(signum: int, frame) -> None:
  """SIGINT or SIGTERM before training: one line and 128 + signum, at once. (Raising
  KeyboardInterrupt instead can be lost: one that lands in a garbage-collector callback,
  as JAX's, is only printed, with a traceback, and the run goes on.) Nothing is being
  written then; the workdir's lock goes with the process."""
  del frame
  text = INTERRUPTED.format(signal.Signals(signum).name)
  sys.stderr.write(f'\n{text}\n' if sys.stderr.isatty() else f'{text}\n')
  sys.stderr.flush()
  os._exit(128 + signum)


def run(main, argv: list[str] | None = None) -> None:
  """app.run(main) with parse_flags; SIGINT (Ctrl-C) and SIGTERM outside the training
  loop, which has its own handlers, end the process with one line (exit 130, 143); a
  full disk is one line."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(signum) is not signal.SIG_IGN:
      signal.signal(signum, _interrupted)
  try:
    app.run(main, argv, flags_parser=parse_flags)
  except OSError as e:  # a write without its own handling (metrics.jsonl) on a full disk
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    sys.exit(f'error: cannot write {e.filename or "a file"}: no space left on device')


def workdir_command(argv: list[str], workdir: str | None, command):
  """The start of the CLIs that read a run folder (report, fix): no positional argument,
  --workdir required; a UserError of command() is one line and exit 1."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not workdir:
    raise app.UsageError('--workdir is required')
  try:
    return command()
  except UserError as e:
    print(f'error: {one_line(e)}', file=sys.stderr)
    sys.exit(1)
