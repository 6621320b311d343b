"""One study as several processes: JAX's multi-controller runtime (TPU pod slices,
multi-GPU and multi-node GPU, or several CPU processes, as the tests run it).

Every process runs the same program over one mesh of all devices of all processes and
holds its share of each array (a streamed run reads only the rows of each batch its
devices hold: local_rows); values the host needs (metrics, predictions) are gathered
to every process. Only process 0 writes the run's files; checkpoints are written by all
processes together (orbax). docs/scale.md has the launch commands.

A job fails together, within train.partner_timeout_s (T seconds):
- joining: a process whose partners have not all joined after T seconds ends with one
  line naming it and the job's size; SIGTERM and SIGINT end it at once while it waits;
- running: every process beats (a counter in the coordination service's key-value
  store, each second) and watches the others' beats from a thread (`Partners`): a
  partner whose beat stops for T seconds without having said it left (`leave`) ends
  this process with one line naming it and saying how to resume; a collective that fails
  because a partner is gone (gloo's 'Connection closed by peer') is one line too
  (`lost_line`). JAX's own timeouts are set to T plus a margin, so the line comes first;
  JAX's option jax_enable_recoverability keeps it from aborting every process when one
  other than process 0 ends. Losing process 0, which runs the coordination service,
  ends the others at once through JAX's own fatal error: stderr passes through a small
  filter process (`_guard_stderr`) that holds back that error's report (a C++ stack and
  'Fatal Python error') and says in one line that the process ended abruptly.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
import traceback

import jax
import numpy as np

from classbias_jax.errors import ConfigError, JobError

# Seconds JAX's own timeouts wait beyond train.partner_timeout_s, so ours fire first.
JAX_MARGIN_S = 30
_BEAT_S = 1.0  # seconds between beats
_BEAT, _LEFT = 'classbias_jax/beat/', 'classbias_jax/left/'
_JOINING = False  # set once this process sets out to join a job of several


def wanted(coordinator_address: str = '') -> bool:
  """Whether this process is one of several: an explicit coordinator, a SLURM job of
  several tasks, or a TPU pod slice of several hosts."""
  if coordinator_address:
    return True
  if int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1:
    return True
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1, timeout_s: float = 120) -> bool:
  """Joins the job when `wanted` (before any JAX computation) and starts watching the
  partners (module docstring); returns whether it did. With a coordinator address, the
  process count and this process's id are required; on TPU pods and SLURM JAX finds all
  three itself. timeout_s: train.partner_timeout_s, seconds."""
  global _JOINING
  if not wanted(coordinator_address):
    return False
  _JOINING = True
  kwargs = {}
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError('--coordinator_address needs --num_processes >= 1 and --process_id '
                        'in 0 .. num_processes - 1')
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu':  # CPU processes talk over gloo
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.config.update('jax_enable_recoverability', True)
  jax_timeout = int(timeout_s) + JAX_MARGIN_S
  kwargs.update(initialization_timeout=jax_timeout, heartbeat_timeout_seconds=jax_timeout,
                shutdown_timeout_seconds=jax_timeout)
  _guard_stderr(process_id)
  _join(kwargs, timeout_s, process_id, num_processes)
  Partners.start(timeout_s)
  return True


# The filter between this process and its stderr: lines pass as they come, but for JAX's
# announcement of a polled error; from the line where JAX's client ends the process (its
# coordination service is gone) nothing passes. The process writes _EXITING as it ends on
# purpose (`end`, or any normal exit): at the end of its stderr without that mark or a
# last line of its own ('error: ...', 'interrupted (...'), it was ended abruptly (JAX's
# fatal error, an abort, a kill), and the filter says so in one line. argv: the fatal line's mark, the announcement's, the exit mark, the line to print.
_FATAL = 'Terminating process because the JAX distributed service'
_POLLED = 'Polled an error from coordination service'
_EXITING = '\x01classbias_jax exits\n'  # a control character: never a real line
_FILTER = r"""
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # ends with the process, whatever it gets
signal.signal(signal.SIGTERM, signal.SIG_IGN)
fatal, polled, exiting = (arg.encode() for arg in sys.argv[1:4])
out, hit, clean, last = sys.stdout.buffer, False, False, b''
for line in sys.stdin.buffer:
  hit = hit or fatal in line
  clean = clean or line == exiting
  if not hit and polled not in line and line != exiting:
    out.write(line)
    out.flush()
    last = line
if not (clean or last.startswith((b'error: ', b'interrupted ('))):
  out.write(sys.argv[4].encode() + b'\n')
"""


def _guard_stderr(process_id: int) -> None:
  """Sends this process's stderr (fd 2) through _FILTER, a child process that writes to
  the stderr it had; a normal exit writes its exit mark."""
  me = f'process {process_id}' if process_id >= 0 else 'this process'
  line = (f'error: {me} ended abruptly: killed, or ended by JAX as the job\'s coordination '
          'service (process 0) failed or is gone; every process of the job stops: start them '
          'all again with the same command to resume from the last checkpoint')
  read, write = os.pipe()
  subprocess.Popen([sys.executable, '-c', _FILTER, _FATAL, _POLLED, _EXITING, line],
                   stdin=read, stdout=2, close_fds=True, start_new_session=True)
  os.close(read)
  sys.stderr.flush()
  os.dup2(write, 2)
  os.close(write)
  atexit.register(_mark_exit)


def _mark_exit() -> None:
  sys.stderr.flush()
  os.write(2, _EXITING.encode())


def _join(kwargs: dict, timeout_s: float, process_id: int, num_processes: int) -> None:
  """jax.distributed.initialize(**kwargs) in a thread, so that the main thread stays
  free to run the signal handlers while it waits; JobError after timeout_s seconds."""
  failed = []

  def connect():
    try:
      jax.distributed.initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 (reported by the main thread)
      failed.append(e)

  thread = threading.Thread(target=connect, name='join', daemon=True)
  thread.start()
  deadline = time.monotonic() + timeout_s
  while thread.is_alive() and time.monotonic() < deadline:
    thread.join(0.1)  # returns to the interpreter: SIGTERM's handler runs here
  me = f'process {process_id}' if process_id >= 0 else 'this process'
  of = f' of {num_processes}' if num_processes else ''
  where = kwargs.get('coordinator_address', 'the coordinator')
  if thread.is_alive():
    raise JobError(f'{me}{of}: the job\'s other processes did not all join at {where} '
                   f'within {timeout_s:g} s (train.partner_timeout_s); start every process '
                   'of the job (each with its own --process_id), then run them all again')
  if failed:
    raise JobError(f'{me}{of}: could not join the job at {where}: '
                   f'{" ".join(str(failed[0]).split())[:200]}')


class Partners:
  """This process's beat and its watch over the partners' (module docstring): a daemon
  thread, one per process, started by initialize and stopped by `leave`."""
  running: 'Partners | None' = None

  def __init__(self, timeout_s: float):
    self.timeout_s, self.stopped = timeout_s, threading.Event()
    self.me, self.count = jax.process_index(), jax.process_count()
    self.client = jax._src.distributed.global_state.client  # noqa: SLF001 (no public API)
    self.thread = threading.Thread(target=self._watch, name='partners', daemon=True)
    # process -> (its last beat, when that last changed: time.monotonic())
    self.seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.me}

  @classmethod
  def start(cls, timeout_s: float) -> None:
    cls.running = cls(timeout_s)
    cls.running.thread.start()

  def _watch(self) -> None:
    beat, failing_since = 0, None
    while not self.stopped.wait(_BEAT_S):
      beat += 1
      try:
        self.client.key_value_set(f'{_BEAT}{self.me}', str(beat), allow_overwrite=True)
        lost, failing_since = self._lost(), None
      except Exception:  # noqa: BLE001 (the coordination service does not answer)
        failing_since = failing_since or time.monotonic()
        lost = [0] if time.monotonic() - failing_since > self.timeout_s else []
      if lost and not self.stopped.is_set():
        end(lost_line(lost=lost, timeout_s=self.timeout_s), 1)

  def _lost(self) -> list[int]:
    """The partners whose beat has not changed for timeout_s seconds and that have not
    left (`seen` updated)."""
    beats = dict(self.client.key_value_dir_get(_BEAT))
    left = dict(self.client.key_value_dir_get(_LEFT))
    lost, now = [], time.monotonic()
    for process, (last, since) in self.seen.items():
      value = beats.get(f'{_BEAT}{process}')
      if f'{_LEFT}{process}' in left:
        continue
      if value != last:
        self.seen[process] = (value, now)
      elif now - since > self.timeout_s:
        lost.append(process)
    return lost


def several() -> bool:
  """Whether this process is one of a job of several (or set out to join one)."""
  return _JOINING


def leave() -> None:
  """Says this process leaves the job on purpose (its work is done, or a signal stopped
  it) and stops watching: the partners do not count it as lost. The others then
  disconnect; process 0, which runs the coordination service, waits for them first
  (up to train.partner_timeout_s), as JAX ends a client whose service is gone."""
  partners = Partners.running
  if partners is None:
    return
  partners.stopped.set()
  try:
    partners.client.key_value_set(f'{_LEFT}{partners.me}', 'left', allow_overwrite=True)
    if partners.me:
      jax.distributed.shutdown()
    else:
      _wait_for_the_others(partners)
  except Exception:  # noqa: BLE001 (a partner already gone: nothing to wait for)
    pass


def _wait_for_the_others(partners: Partners) -> None:
  """Returns once every other process has left (its key) and disconnected (it is no
  longer among the live processes), or after partners.timeout_s."""
  deadline = time.monotonic() + partners.timeout_s
  for process in range(1, partners.count):
    left_ms = max(1, int(1000 * (deadline - time.monotonic())))
    partners.client.blocking_key_value_get(f'{_LEFT}{process}', left_ms)
  others = list(range(partners.count))
  while time.monotonic() < deadline:
    live = _ask(lambda: partners.client.get_live_nodes(others), deadline - time.monotonic())
    if live is None or set(live) <= {0}:
      return
    time.sleep(0.05)


def _ask(question, wait_s: float):
  """question() from a thread, or None when it has not answered within wait_s seconds
  (the coordination service's live-process query waits for every live process)."""
  answer = []

  def ask():
    try:
      answer.append(question())
    except Exception:  # noqa: BLE001 (no answer)
      answer.append(None)
  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(max(0.0, wait_s))
  return answer[0] if answer else None


# Words of the errors of a collective whose partner is gone (gloo, gRPC, NCCL).
_PARTNER_GONE = ('gloo', 'connection', 'unavailable', 'deadline', 'peer', 'nccl', 'socket')


def fail(error: Exception) -> None:
  """Ends this process of a job after an unexpected `error` (`end`): one line when a
  partner is gone (its beat stopped, or the error is a collective's that lost one), else
  the traceback first, as a bug of this process deserves."""
  lost = _missing()
  if not lost and not any(word in str(error).lower() for word in _PARTNER_GONE):
    traceback.print_exception(error)
    end(f'error: process {jax.process_index()} of {jax.process_count()} stopped on the '
        'error above; every process of the job stops', 1)
  end(lost_line(error, lost), 1)


def lost_line(error: BaseException | None = None, lost: list[int] | None = None,
              timeout_s: float | None = None) -> str:
  """The one line a process prints when its job breaks: which process says it, which
  partner was lost (`_missing` when not given) and how to go on. error: what broke (a
  failed collective), or None when the watch found `lost` silent."""
  me = f'process {jax.process_index()} of {jax.process_count()}'
  lost = lost if lost is not None else _missing()
  what = f'lost process {", ".join(str(p) for p in lost)}' if lost else 'a partner failed'
  if error is not None:
    reason = ' '.join(str(error).split())
    reason = reason.rsplit('] ', 1)[-1] if 'Gloo' in reason else reason  # gloo: its cause
    what += f' ({type(error).__name__}: {reason[:160]})'
  elif timeout_s:
    what += f' (silent for {timeout_s:g} s, train.partner_timeout_s)'
  return (f'error: {me}: {what}; every process of the job stops: start them all again '
          'with the same command to resume from the last checkpoint')


def _missing(wait_s: float = 4.0) -> list[int]:
  """The partners whose beat has not been seen to change for the last 2.5 beats, after
  waiting wait_s seconds: the ones gone, when a collective has just failed (a live one
  beats each second and is looked at each second; a gone one was last seen changing at
  most a second after it went)."""
  partners = Partners.running
  if partners is None:
    return []
  time.sleep(wait_s)
  now = time.monotonic()
  return sorted(p for p, (_, since) in partners.seen.items() if now - since > 2.5 * _BEAT_S)


def end(line: str, code: int) -> None:
  """Prints `line` and ends this process at once with `code`: in a job of several no
  exit handler runs (JAX's would wait for the partners at its shutdown barrier)."""
  sys.stdout.flush()
  print(line, file=sys.stderr, flush=True)
  if several():
    _mark_exit()
    os._exit(code)
  sys.exit(code)


def is_lead() -> bool:
  """True in the process that writes the run's files (process 0)."""
  return jax.process_index() == 0


def to_host(tree):
  """The whole value of every array of `tree` as numpy, in every process (gathered from
  the processes that hold its shards)."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(one, tree)


def gather_flags(flags) -> np.ndarray:
  """bool [processes, len(flags)]: every process's flags, in every process (a host-side
  collective; one process: its own flags)."""
  flags = np.asarray(flags, np.int32)
  if jax.process_count() == 1:
    return flags[None].astype(bool)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(flags)).reshape(
      jax.process_count(), -1).astype(bool)


def local_rows(sharding, size: int) -> tuple[int, int] | None:
  """(start, stop): the rows of a [size, ...] array laid out by `sharding` that this
  process's devices hold, when that is not all of them and they are one block (else
  None: the process needs every row)."""
  if sharding is None or jax.process_count() == 1:
    return None
  indices = sharding.addressable_devices_indices_map((size,)).values()
  spans = sorted({index[0].indices(size)[:2] for index in indices})
  start, stop = spans[0][0], spans[0][0]
  for first, last in spans:
    if first > stop:  # a gap: not one block
      return None
    stop = max(stop, last)
  return None if (start, stop) == (0, size) else (start, stop)


def from_local_rows(tree, sharding, size: int):
  """The global arrays [size, ...] laid out by `sharding`, each made from this process's
  rows `local_rows(sharding, size)` of it (every process gives its own)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, np.asarray(x), (size,) + np.shape(x)[1:]), tree)
