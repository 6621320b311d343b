"""One study as several processes: JAX's multi-controller runtime (TPU pod slices,
multi-GPU and multi-node GPU, or several CPU processes, as the tests run it).

Every process runs the same program over one mesh of all devices of all processes and
holds its share of each array (a streamed run reads only the rows of each batch its
devices hold: local_rows); values the host needs (metrics, predictions) are gathered
to every process. Only process 0 writes the run's files; checkpoints are written by all
processes together (orbax). docs/scale.md has the launch commands.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from classbias_jax.errors import ConfigError


def wanted(coordinator_address: str = '') -> bool:
  """Whether this process is one of several: an explicit coordinator, a SLURM job of
  several tasks, or a TPU pod slice of several hosts."""
  if coordinator_address:
    return True
  if int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1:
    return True
  return ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> bool:
  """Joins the job when `wanted` (before any JAX computation); returns whether it did.
  With a coordinator address, the process count and this process's id are required; on
  TPU pods and SLURM JAX finds all three itself."""
  if not wanted(coordinator_address):
    return False
  kwargs = {}
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError('--coordinator_address needs --num_processes >= 1 and --process_id '
                        'in 0 .. num_processes - 1')
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu':  # CPU processes talk over gloo
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  return True


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
