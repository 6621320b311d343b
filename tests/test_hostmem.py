"""hostmem: the opt-in allocator settings apply on a CPU host with glibc, not where JAX
may use an accelerator."""
import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

CODE = ('from classbias_jax import hostmem; import ctypes; '
        'print(hostmem.retain_freed_memory(), hostmem.applied); '
        'b = ctypes.create_string_buffer(64 << 20); print(len(b))')


def run(**env):
  out = subprocess.run([sys.executable, '-c', CODE], env={**os.environ, **env}, cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.split()
  assert out[-1] == str(64 << 20)  # large allocations still work (no mmap: from the heap)
  return out[:2]


@pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
                    reason='glibc only')
def test_retain_freed_memory_applies_on_cpu_hosts_only():
  assert run(JAX_PLATFORMS='cpu') == ['True', 'True']
  assert run(JAX_PLATFORMS='cuda') == ['False', 'False']
  assert run(JAX_PLATFORMS='tpu,cpu') == ['False', 'False']
