"""Host memory on CPU: how the C library's allocator serves XLA:CPU's per-step buffers.

With glibc's defaults a training step's large buffers are mapped afresh from the kernel
every step and their pages faulted in 4 KB at a time, a large share of a step's CPU time
(measured in docs/benchmarks.md). Modes (CLASSBIAS_MALLOC for `python -m
classbias_jax.main`, --malloc for the benchmark):

- 'hugepages' (the default): glibc's `glibc.malloc.hugetlb=1` tunable, so that malloc
  asks for transparent huge pages (2 MB) for the memory it maps. Tunables are read when a
  process starts, so the entry point executes itself again, once, with the tunable added
  to GLIBC_TUNABLES (before anything heavy is imported). Applies on Linux with glibc >=
  2.35 when the kernel's transparent huge pages are in 'madvise' mode ('always' needs
  nothing; 'never' cannot) and JAX runs on the CPU.
- 'retain': `mallopt` before JAX starts its threads: one arena, no mmap, no trimming, so
  memory freed by a step is reused by the next and the process keeps its peak memory.
  Faster for CIFAR-sized models; small models' many small allocations contend in the
  one arena.
- 'system': the C library's defaults.

A notebook or another program that calls `trainer.run` itself runs with the allocator its
process started with: start it with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for 'hugepages'.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys

ENV = 'CLASSBIAS_MALLOC'
MODES = ('hugepages', 'retain', 'system')
DEFAULT = 'hugepages'
HUGETLB = 'glibc.malloc.hugetlb=1'
THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc malloc.h
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1))
applied = False  # whether this process runs with SETTINGS ('retain')


def accelerator_plugin_installed() -> bool:
  """True when JAX may run on a GPU or TPU here: a JAX plugin or libtpu is installed, or
  JAX_PLATFORMS names something other than the CPU."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('', 'cpu') for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None:
    return True
  return bool(list(importlib.metadata.entry_points(group='jax_plugins')))


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library when it is glibc on Linux, else None."""
  if not sys.platform.startswith('linux'):
    return None
  name, version = platform.libc_ver()
  match = re.match(r'(\d+)\.(\d+)', version)
  return (int(match[1]), int(match[2])) if name == 'glibc' and match else None


def transparent_huge_pages() -> str:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), '' if unknown."""
  try:
    with open(THP_SETTING) as f:
      match = re.search(r'\[(\w+)\]', f.read())
  except OSError:
    return ''
  return match[1] if match else ''


def _tunables() -> list[str]:
  return [t for t in os.environ.get('GLIBC_TUNABLES', '').split(':') if t]


def hugepages_available() -> bool:
  """Whether mode 'hugepages' can take effect here: JAX on the CPU with glibc, and the
  kernel's transparent huge pages 'always' on, or on request ('madvise') with glibc >=
  2.35, which has the HUGETLB tunable."""
  if glibc_version() is None or accelerator_plugin_installed():
    return False
  thp = transparent_huge_pages()
  return thp == 'always' or (thp == 'madvise' and glibc_version() >= (2, 35))


def in_effect() -> str:
  """The allocator mode this process runs with: 'retain', 'hugepages' or 'system'."""
  if applied:
    return 'retain'
  if hugepages_available() and (transparent_huge_pages() == 'always'
                                or HUGETLB in _tunables()):
    return 'hugepages'
  return 'system'


def retain_freed_memory() -> bool:
  """Applies SETTINGS on Linux with glibc when JAX runs on the CPU (see the module
  docstring); True when they were applied. Must run before JAX starts its threads
  (threads keep the arena they first used)."""
  if glibc_version() is None or accelerator_plugin_installed():
    return False
  global applied
  mallopt = ctypes.CDLL(None).mallopt
  applied = all([mallopt(option, value) == 1 for option, value in SETTINGS])
  return applied


def setup(mode: str | None = None, may_exec: bool = True) -> str:
  """Puts the process in allocator mode `mode` (default: $CLASSBIAS_MALLOC, else
  'hugepages'); command-line entry points only, first thing, as 'hugepages' may execute
  the process again (same interpreter, arguments and environment plus the tunable).
  Returns the mode in effect; an unknown mode exits with a one-line error. With
  may_exec=False (a call from Python, not a command line) 'hugepages' changes nothing."""
  mode = mode or os.environ.get(ENV) or DEFAULT
  if mode not in MODES:
    sys.exit(f'error: {ENV} / --malloc must be one of {", ".join(MODES)}, got {mode!r}')
  if mode == 'retain':
    retain_freed_memory()
  elif (mode == 'hugepages' and may_exec and sys.executable and hugepages_available()
        and transparent_huge_pages() == 'madvise' and HUGETLB not in _tunables()):
    env = dict(os.environ, GLIBC_TUNABLES=':'.join(_tunables() + [HUGETLB]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  return in_effect()
