"""Two processes on localhost form one JAX job (CPU collectives over gloo) whose results
equal the one-process run's on the same 2-D mesh; a job that fails together."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, host_devices_env

from classbias_jax import results
from classbias_jax.train import checkpoint, distributed

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


# ----------------------------------------------------------------------------------------
# A job that fails together.
# ----------------------------------------------------------------------------------------
# The default CPU strategy with one device per process: each process trains all models.
SEQUENTIAL = ('--config=configs/wd.py:runlocal,seeds=1,epochs=2', '--config.model.name=tiny',
              '--config.sweep.values=(0.0,0.001)', '--config.train.strategy=sequential',
              '--config.train.compile_cache=', '--config.data.train_subset=384',
              '--config.train.batch_size=16', '--config.train.checkpoint_every_steps=4')


def start(workdir, *args, process_id=None, port=None, devices=1, **env) -> subprocess.Popen:
  """main.py with SEQUENTIAL + args; as process `process_id` of two at `port` when given."""
  job = [] if process_id is None else [f'--coordinator_address=127.0.0.1:{port}',
                                       '--num_processes=2', f'--process_id={process_id}']
  return subprocess.Popen([sys.executable, '-m', 'classbias_jax.main', *SEQUENTIAL,
                           f'--workdir={workdir}', *job, *args], cwd=ROOT,
                          env=dict(host_devices_env(devices), **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_a_partner_that_never_joins_ends_the_job_in_one_line(tmp_path):
  began = time.monotonic()
  process = start(tmp_path / 'run', '--config.train.partner_timeout_s=3', process_id=0,
                  port=_free_port())
  _, err = process.communicate(timeout=120)
  assert process.returncode == 1, err
  assert err.strip().splitlines() == [
      f'error: process 0 of 2: the job\'s other processes did not all join at '
      f'127.0.0.1:{err.split("127.0.0.1:")[1].split()[0]} within 3 s '
      '(train.partner_timeout_s); start every process of the job (each with its own '
      '--process_id), then run them all again']
  assert time.monotonic() - began < 60  # 3 s of waiting, the rest is starting Python
  assert not (tmp_path / 'run').exists()


def test_sigterm_while_waiting_for_partners_ends_at_once(tmp_path):
  process = start(tmp_path / 'run', process_id=1, port=_free_port())  # waits 120 s
  time.sleep(8)  # imports done: waiting to join
  assert process.poll() is None
  signalled = time.monotonic()
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=60)
  assert process.returncode == 143 and time.monotonic() - signalled < 10, err
  assert err.strip() == 'interrupted (SIGTERM) before training began, nothing saved; run the same command again'


def test_jax_ending_a_process_for_its_lost_coordinator_is_one_line():
  # What JAX's client prints when process 0 is gone, through the stderr filter: one line
  # at the end, as the process did not end on purpose (no exit mark).
  report = ('progress\nE1206 coordination_service_agent.cc:289] Polled an error from '
            'coordination service (this can be an error from this or another task).\n'
            'F1206 client.h:80] Terminating process because the JAX distributed service '
            'detected fatal errors.\n*** Check failure stack trace: ***\nFatal Python error: '
            'Aborted\n')
  run = lambda text: subprocess.run(
      [sys.executable, '-c', distributed._FILTER, distributed._FATAL, distributed._POLLED,
       distributed._EXITING, 'the line'], input=text, capture_output=True, text=True,
      timeout=60).stdout
  assert run(report) == 'progress\nthe line\n'
  assert run('progress\nwrote it\n' + distributed._EXITING) == 'progress\nwrote it\n'
  assert run('progress\n') == 'progress\nthe line\n'  # killed: no exit mark
  assert run('interrupted (SIGTERM) before training\n') == 'interrupted (SIGTERM) before training\n'


def wait_for(condition, process, seconds=300):
  deadline = time.monotonic() + seconds
  while not condition() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  assert process.poll() is None, 'the job ended before it could be signalled'


def test_two_processes_sigtermed_resume_to_the_one_process_results(tmp_path):
  # Under the default CPU strategy (sequential), step checkpoints of two processes:
  # SIGTERM to process 1 stops both at the same step, each with one line, and the job
  # started again resumes to the one-process results (the same programs: exactly).
  # 20-30 s on two quiet cores (the three runs overlap), 90-160 s on busy ones.
  workdir, port = tmp_path / 'two', _free_port()
  one = start(tmp_path / 'one')
  job = [start(workdir, process_id=i, port=port) for i in range(2)]
  wait_for(lambda: checkpoint.latest(str(workdir)) is not None, job[1])
  job[1].send_signal(signal.SIGTERM)
  for process in job:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert 'Traceback' not in err and err.strip().splitlines()[-1].startswith(
        'interrupted (SIGTERM) after')
  assert not (workdir / results.RESULTS_FILE).exists()
  port = _free_port()
  job = [start(workdir, process_id=i, port=port) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in [*job, one]]
  for process, (_, err) in zip([*job, one], outs):
    assert process.returncode == 0, err
  assert 'resuming from the checkpoint after epoch' in outs[0][1]
  a, b = results.load_results(str(tmp_path / 'one')), results.load_results(str(workdir))
  for key in ('test_predictions', 'train_loss', 'per_class_accuracy'):
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.skipif(not os.environ.get('CLASSBIAS_SLOW_TESTS'),
                    reason='two runs of two processes (7-16 s each on two quiet cores, '
                           'a minute on busy ones); CLASSBIAS_SLOW_TESTS=1')
@pytest.mark.parametrize('lost', [1, 0])
def test_a_lost_process_ends_its_partner_in_one_line(tmp_path, lost):
  workdir, port = tmp_path / 'two', _free_port()
  job = [start(workdir, '--config.train.epochs=4', '--config.train.partner_timeout_s=20',
               process_id=i, port=port) for i in range(2)]
  wait_for(lambda: (workdir / 'metrics.jsonl').exists()
           and (workdir / 'metrics.jsonl').stat().st_size, job[0])
  job[lost].kill()
  killed = time.monotonic()
  _, err = job[1 - lost].communicate(timeout=300)
  job[lost].communicate(timeout=60)
  assert time.monotonic() - killed < 30  # the partner timeout bounds it
  assert err.strip(), (job[1 - lost].returncode, err)
  line = err.strip().splitlines()[-1]
  assert job[1 - lost].returncode != 0 and 'Traceback' not in err and 'Fatal' not in err, err
  assert line.startswith(f'error: process {1 - lost}') and line.endswith(
      'start them all again with the same command to resume from the last checkpoint')
  assert (f'lost process {lost}' if lost else 'ended abruptly') in line
