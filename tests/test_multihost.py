"""Two processes on localhost form one JAX job (CPU collectives over gloo) whose results
equal the one-process run's on the same 2-D mesh."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, host_devices_env

from classbias_jax import results

ARGS = ('--config=configs/wd.py:runlocal,seeds=2,epochs=2', '--config.model.name=tiny',
        '--config.sweep.values=(0.0,0.001)', '--config.train.strategy=mesh:2x2',
        '--config.train.eval_every=1', '--config.train.compile_cache=',
        '--config.data.train_subset=384')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_both(tmp_path, *args) -> list[tuple[str, str]]:
  """Runs ARGS + args as one process with 4 host devices (workdir one/) and as a job of
  two processes with 2 each (workdir two/); (stdout, stderr) of process 0, 1 and the one."""
  main = [sys.executable, '-m', 'classbias_jax.main', *ARGS, *args]
  port, workdir = _free_port(), tmp_path / 'two'
  start = lambda args, devices: subprocess.Popen(
      [*main, *args], cwd=ROOT, env=host_devices_env(devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  # The one-process run and the two-process job at once: their compilations overlap.
  one = start([f'--workdir={tmp_path / "one"}'], 4)
  procs = [start([f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{port}',
                  '--num_processes=2', f'--process_id={i}'], 2) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in [*procs, one]]
  for p, (_, err) in zip([*procs, one], outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def test_two_processes_give_the_one_process_results(tmp_path):
  outs, workdir = run_both(tmp_path), tmp_path / 'two'
  # Only process 0 writes; the job's results are the one-process run's (the same program
  # partitioned the same way; the sums across devices may run in another order).
  assert 'mesh:2x2' in outs[0][1] and 'wrote' in outs[0][1] and 'wrote' not in outs[1][1]
  resolved = json.loads((workdir / 'config.json').read_text())['resolved']
  assert (resolved['processes'], resolved['strategy']) == (2, 'mesh:2x2')
  a, b = results.load_results(str(tmp_path / 'one')), results.load_results(str(workdir))
  assert (a['test_predictions'] == b['test_predictions']).mean() > 0.99
  np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-4)
  np.testing.assert_allclose(a['per_class_accuracy'], b['per_class_accuracy'], atol=0.03)
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(tmp_path / 'one'))


@pytest.mark.skipif(not os.environ.get('CLASSBIAS_SLOW_TESTS'),
                    reason='three more processes (minutes on two cores); CLASSBIAS_SLOW_TESTS=1')
def test_two_streaming_processes_each_read_half_of_each_batch(tmp_path):
  # mesh 1x4: the data axis spans both processes, so each reads the rows of its two
  # devices (half of each global batch: tests/test_stream_rows.py) and the global batch
  # is made from the two halves; the results are the one-process run's.
  outs = run_both(tmp_path, '--config.data.input_mode=streamed',
                  '--config.train.strategy=mesh:1x4')
  assert 'mesh:1x4, input streamed' in outs[0][1] and 'wrote' in outs[0][1]
  assert 'reads its rows of every batch of 64 (process 0: rows 0:32)' in outs[0][1]
  a, b = results.load_results(str(tmp_path / 'one')), results.load_results(str(tmp_path / 'two'))
  assert (a['test_predictions'] == b['test_predictions']).mean() > 0.99
  np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-4)
