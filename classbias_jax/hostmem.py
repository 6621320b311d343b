"""Host memory on CPU, opt-in: freed memory stays in the process, so a training step does
not fault its buffers in afresh from the kernel every time.

With glibc's defaults, XLA:CPU's per-step buffers come from per-thread malloc arenas whose
heaps are created and deleted every step, and large blocks are mapped and unmapped: a
ResNet-20 step at batch 128 took about 80,000 minor page faults, 150-170 ms of kernel time,
a quarter of the process's CPU time (docs/benchmarks.md). `retain_freed_memory` sets, with
`mallopt`, one arena, no mmap for large blocks and no trimming, so memory freed by a step
is reused by the next (a block larger than a thread arena's 64 MB heap is mapped afresh
whatever the mmap settings, so one arena is what stops it). Measured: an 8-model ResNet-20
sweep under strategy 'sequential' 1.25x faster (404-426 vs 319-342 images/s), but an
8-model unrolled program 0.76x as fast and small models (the runlocal study's ResNet-8s
on 8x8 images) 1.15-1.4x slower: every thread then shares one arena, and their many
small allocations contend. So it is off unless asked for: CLASSBIAS_MALLOC=retain
(`python -m classbias_jax.main`) or the benchmark's --malloc=retain. The process keeps
its peak memory until it exits.

It must run before JAX starts its threads (threads keep the arena they first used), so
the command-line entry points call it first, and only when JAX will run on the CPU (no
accelerator plugin installed).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import sys

ENV = 'CLASSBIAS_MALLOC'  # 'retain': the entry points call retain_freed_memory
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc malloc.h
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1))
applied = False  # whether this process runs with SETTINGS


def accelerator_plugin_installed() -> bool:
  """True when JAX may run on a GPU or TPU here: a JAX plugin or libtpu is installed, or
  JAX_PLATFORMS names something other than the CPU."""
  platforms = os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return any(p.strip() not in ('', 'cpu') for p in platforms.split(','))
  if importlib.util.find_spec('libtpu') is not None:
    return True
  return bool(list(importlib.metadata.entry_points(group='jax_plugins')))


def retain_freed_memory() -> bool:
  """Applies SETTINGS on Linux with glibc when JAX runs on the CPU (see the module
  docstring); True when they were applied. The entry points call it when asked."""
  if (not sys.platform.startswith('linux')
      or platform.libc_ver()[0] != 'glibc' or accelerator_plugin_installed()):
    return False
  global applied
  mallopt = ctypes.CDLL(None).mallopt
  applied = all([mallopt(option, value) == 1 for option, value in SETTINGS])
  return applied
