"""Faults a user meets as one line, never a traceback: a workdir in use or holding another
study, a full disk (results, figures, checkpoints), a workdir that is a file, a truncated
IDX file, predictions outside the classes, a config that fails to load, Ctrl-C early."""
import errno
import gzip
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, tiny_config, tiny_plan, init_states

from classbias_jax import results
from classbias_jax.train import checkpoint
from classbias_jax.audit import figures as plots
from classbias_jax.train import trainer
from classbias_jax.train import study_dir, summaries
from classbias_jax.data import idx
from classbias_jax.errors import ConfigError, DataUnavailable, ResultsError, WriteError

ENV = dict(os.environ, JAX_PLATFORMS='cpu', CLASSBIAS_COMPILE_CACHE=os.path.join(ROOT, '.jax_cache'))
RUNLOCAL = ['--config=configs/wd.py:runlocal,seeds=1,epochs=1', '--config.model.name=tiny']


def cli_run(args, **kwargs) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'classbias_jax.main', *args], cwd=ROOT,
                          env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          **kwargs)


def one_error_line(process: subprocess.Popen) -> str:
  """The single line the failed command printed (asserted: non-zero exit, no traceback)."""
  _, err = process.communicate(timeout=120)
  assert process.returncode != 0, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


def tiny_arrays(v=2, s=1, c=3, n=6):
  labels = np.arange(n, dtype=np.int32) % c
  predictions = np.tile(labels, (v, s, 1))
  acc = results.class_accuracy(predictions == labels, labels, c)
  return {'per_class_accuracy': acc, 'mean_accuracy': acc.mean(-1),
          'test_labels': labels, 'test_predictions': predictions,
          'sweep_name': np.asarray('optim.weight_decay'), 'sweep_values': np.arange(v, dtype=float),
          'seeds': np.arange(s), 'class_names': np.asarray([f'c{i}' for i in range(c)])}


def full_disk(monkeypatch) -> None:
  """Every fsync fails as on a full disk: the data were written, none reached the disk."""
  def fsync(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, 'fsync', fsync)


# ------------------------------------------------------------------ one workdir, one study

def test_a_workdir_is_locked_for_the_run(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from classbias_jax.train import study_dir\n'
       'with study_dir.lock(sys.argv[1]): print("held", flush=True); time.sleep(120)', workdir],
      cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(ConfigError, match=rf'in use by another run \(pid {holder.pid} on '):
      trainer.run(tiny_config(), workdir)
    line = one_error_line(cli_run(RUNLOCAL + [f'--workdir={workdir}']))
    assert f'{workdir} is in use by another run (pid {holder.pid} on ' in line
  finally:
    holder.kill()  # SIGKILL: the kernel drops the lock with the process
    holder.wait()
  with study_dir.lock(workdir):  # free again; the .lock file names this process now
    assert f'pid {os.getpid()} ' in open(os.path.join(workdir, study_dir.LOCK_FILE)).read()
  assert os.listdir(workdir) == []
  fresh = str(tmp_path / 'fresh')
  with study_dir.lock(fresh):
    pass
  assert not os.path.exists(fresh)  # a run stopped before writing anything leaves no folder


def test_results_of_another_config_are_kept_unless_overwrite(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(seeds=1, train__epochs=1, train__eval_every=0)
  trainer.run(config, workdir)  # config.json as the trainer writes it, with 'resolved'
  open(os.path.join(workdir, 'notes.txt'), 'w').close()
  open(os.path.join(workdir, 'policy.json'), 'w').close()  # a fix chosen from this sweep
  files = sorted(os.listdir(workdir))
  assert (summaries.SUMMARIES_DIR in files) == summaries.available()  # --overwrite deletes it

  # What never changes results may differ: the same study (a rerun trains again).
  same = tiny_config(seeds=1, train__epochs=1, train__eval_every=0, data__workers=3,
                     train__checkpoint_every=2, train__compile_cache='',
                     train__tensorboard=False, train__profile_steps=(0, 1))
  study_dir.guard_results(workdir, same, overwrite=False)
  other = tiny_config(seeds=2, train__epochs=1, train__eval_every=0, optim__momentum=0.5)
  with pytest.raises(ConfigError, match=r'finished results of another config \(differs in '
                                        r'optim.momentum, seeds\); .* --overwrite'):
    trainer.run(other, workdir)  # refused before anything runs or is written
  assert sorted(os.listdir(workdir)) == files

  study_dir.guard_results(workdir, other, overwrite=True)
  assert os.listdir(workdir) == ['notes.txt']  # that study's files only, its policy too


# ------------------------------------------------------------------ a full disk

def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
  full_disk(monkeypatch)
  with pytest.raises(WriteError, match=rf'^cannot write {tmp_path}/results.npz: no space '
                                       'left on device$'):
    results.save_results(str(tmp_path), tiny_arrays())
  figure = str(tmp_path / 'figures' / 'per_class_accuracy.png')
  with pytest.raises(WriteError, match=rf'^cannot write {figure}: no space left on device$'):
    plots.per_class_accuracy(tiny_arrays(), figure)
  assert os.listdir(tmp_path / 'figures') == []
  assert sorted(os.listdir(tmp_path)) == ['figures']
  monkeypatch.undo()

  # A checkpoint: orbax's writes fail inside its own threads.
  from etils import epath
  config = tiny_config()
  plan = tiny_plan(config)
  from classbias_jax.models import create_model
  state = init_states(plan, create_model('tiny', 10, 1.0))
  path_type, real_open = type(epath.Path(str(tmp_path))), type(epath.Path('/')).open

  def open_on_full_disk(self, mode='r', *args, **kwargs):
    if 'w' in mode and '.orbax-checkpoint-tmp' in str(self):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    return real_open(self, mode, *args, **kwargs)

  monkeypatch.setattr(path_type, 'open', open_on_full_disk)
  workdir = str(tmp_path / 'ckpt')
  with pytest.raises(WriteError, match=rf'^cannot write the checkpoint in {workdir}/checkpoint: '
                                       'no space left on device$'):
    checkpoint.save(workdir, 1, state, {'config': checkpoint.config_json(config)})
  assert os.listdir(workdir) == []  # no temporary folder, no empty checkpoint folder


# ------------------------------------------------------------------ one line, not a traceback

def test_user_mistakes_are_one_line(tmp_path):
  # The workdir is a file.
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(ConfigError, match=r'--workdir .*file is a file, not a folder'):
    trainer.run(tiny_config(), str(path))

  # A truncated .gz IDX file.
  images = np.zeros((4, 2, 2), np.uint8)
  data = b'\0\0\x08\x03' + np.asarray(images.shape, '>i4').tobytes() + images.tobytes()
  packed = gzip.compress(data)
  gz = tmp_path / 'train-images-idx3-ubyte.gz'
  gz.write_bytes(packed)
  np.testing.assert_array_equal(idx.read_idx(str(gz)), images)
  gz.write_bytes(packed[:len(packed) // 2])
  with pytest.raises(DataUnavailable, match=r'train-images-idx3-ubyte.gz: truncated or corrupt'):
    idx.read_idx(str(gz))

  # Predictions outside 0..C-1 given to the report.
  arrays = tiny_arrays()
  arrays['test_predictions'][0, 0, 0] = 3
  with pytest.raises(ResultsError, match=r'test_predictions outside 0..2'):
    results.validate(arrays)
  np.savez(tmp_path / 'results.npz', **arrays)
  report = subprocess.run([sys.executable, '-m', 'classbias_jax.report',
                           f'--workdir={tmp_path}'], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=120)
  assert report.returncode != 0
  assert report.stderr.strip().splitlines() == [
      f'error: {tmp_path}/results.npz: test_predictions outside 0..2 (C=3 classes), e.g. 3']



@pytest.mark.parametrize('args, message', [
    (['--config=configs/nope.py'], 'error: --config: no such file configs/nope.py'),
    (['--config=configs/wd.py:runlocal,nosuchkey=1'], "error: unknown config arg 'nosuchkey'"),
    (RUNLOCAL + ['--config.train.nosuch=1'],
     'error: --config.train.nosuch: no such field in the config'),
])
def test_a_config_that_fails_to_load_is_one_line(tmp_path, args, message):
  line = one_error_line(cli_run(args + [f'--workdir={tmp_path}']))
  assert line.startswith(message), line


def test_ctrl_c_before_training_is_one_line_and_130(tmp_path):
  process = cli_run(RUNLOCAL + [f'--workdir={tmp_path / "run"}'])
  time.sleep(2.5)  # importing JAX, loading data or compiling: before the first step
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 130, err
  assert 'Traceback' not in err
  assert err.strip().splitlines()[-1].startswith('interrupted (SIGINT) '), err
