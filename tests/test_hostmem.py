"""hostmem: the allocator modes apply on a CPU host with glibc, not where JAX may use an
accelerator; 'hugepages' executes the process again once, with the glibc tunable added."""
import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

from classbias_jax.tuning import hostmem

CODE = ('from classbias_jax.tuning import hostmem; import ctypes; '
        'print(hostmem.retain_freed_memory(), hostmem.applied); '
        'b = ctypes.create_string_buffer(64 << 20); print(len(b))')
SETUP = ('from classbias_jax.tuning import hostmem; import os; mode = hostmem.setup(); '
         'print(mode, os.environ.get("GLIBC_TUNABLES", "-"))')
glibc_only = pytest.mark.skipif(
    not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
    reason='glibc only')


def python(code, check=True, **env):
  base = {k: v for k, v in os.environ.items() if k not in (hostmem.ENV, 'GLIBC_TUNABLES')}
  return subprocess.run([sys.executable, '-c', code], env={**base, **env}, cwd=ROOT,
                        capture_output=True, text=True, check=check)


def run(**env):
  out = python(CODE, **env).stdout.split()
  assert out[-1] == str(64 << 20)  # large allocations still work (no mmap: from the heap)
  return out[:2]


@glibc_only
def test_retain_freed_memory_applies_on_cpu_hosts_only():
  assert run(JAX_PLATFORMS='cpu') == ['True', 'True']
  assert run(JAX_PLATFORMS='cuda') == ['False', 'False']
  assert run(JAX_PLATFORMS='tpu,cpu') == ['False', 'False']


@glibc_only
@pytest.mark.skipif(not hostmem.hugepages_available()
                    or hostmem.transparent_huge_pages() != 'madvise',
                    reason="needs glibc >= 2.35 and transparent huge pages in 'madvise' mode")
def test_hugepages_executes_the_process_again_once_with_the_tunable():
  mode, tunables = python(SETUP, JAX_PLATFORMS='cpu').stdout.split()
  assert (mode, tunables) == ('hugepages', hostmem.HUGETLB)
  # Tunables already set are kept; the script's output appears once (one exec, no loop).
  out = python(SETUP, JAX_PLATFORMS='cpu', GLIBC_TUNABLES='glibc.malloc.tcache_count=8').stdout
  assert out.split()[:2] == ['hugepages', 'glibc.malloc.tcache_count=8:' + hostmem.HUGETLB]
  assert len(out.splitlines()) == 1
  # Not where an accelerator may run, nor when the system's defaults are asked for.
  assert python(SETUP, JAX_PLATFORMS='cuda').stdout.split()[:2] == ['system', '-']
  out = python(SETUP, JAX_PLATFORMS='cpu', CLASSBIAS_MALLOC='system').stdout
  assert out.split()[:2] == ['system', '-']


def test_unknown_mode_is_one_line_error():
  proc = python(SETUP, check=False, CLASSBIAS_MALLOC='huge')
  assert proc.returncode == 1 and not proc.stdout
  assert proc.stderr.strip().splitlines() == [
      "error: CLASSBIAS_MALLOC / --malloc must be one of hugepages, retain, system, got 'huge'"]
