"""Faults: SIGTERM and SIGINT save a checkpoint the same command resumes from; checkpoints
inside an epoch, by steps or by time, resume to the results of an uninterrupted run."""
import gc
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from conftest import ROOT, Interrupted, run_until_first_checkpoint, tiny_config

from classbias_jax import results
from classbias_jax.train import checkpoint
from classbias_jax.train import interrupts
from classbias_jax.train import model_axis
from classbias_jax.train import trainer

# The CLI run of the tests below: 2 models, 3 epochs of 84 steps (about a second each).
COMMAND = [sys.executable, '-m', 'classbias_jax.main',
           '--config=configs/wd.py:runlocal,seeds=1,epochs=3', '--config.model.name=tiny',
           '--config.sweep.values=(0.0,0.01)', '--config.train.batch_size=16']
ENV = dict(os.environ, JAX_PLATFORMS='cpu', CLASSBIAS_COMPILE_CACHE=os.path.join(ROOT, '.jax_cache'))


def cli(workdir: str, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(COMMAND + [f'--workdir={workdir}'], cwd=ROOT, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def finish(process: subprocess.Popen) -> tuple[int, str]:
  _, err = process.communicate(timeout=300)
  return process.returncode, err


def logged_epochs(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path).read().splitlines() if line.strip()]


def assert_same_results(workdir: str, reference: str) -> None:
  got, want = results.load_results(workdir), results.load_results(reference)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  strip = lambda records: [{k: v for k, v in r.items() if k != 'seconds'} for r in records]
  assert strip(logged_epochs(workdir)) == strip(logged_epochs(reference))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('faults') / 'whole')
  code, err = finish(cli(workdir))
  assert code == 0, err
  return workdir


def interrupt(workdir: str, name: str, code: int, after_epochs: int) -> None:
  """Runs the CLI until it has logged `after_epochs` epochs, sends signal `name`, and checks
  the one line and the exit code: a checkpoint saved, no results."""
  process = cli(workdir)
  deadline = time.time() + 240
  while (len(logged_epochs(workdir)) < after_epochs and process.poll() is None
         and time.time() < deadline):
    time.sleep(0.01)
  assert process.poll() is None, 'the run ended before it could be signalled'
  process.send_signal(getattr(signal, name))
  returncode, err = finish(process)
  assert returncode == code, err
  assert 'Traceback' not in err
  about = [line for line in err.splitlines() if 'interrupted' in line or 'resume' in line]
  assert about[-1] == err.splitlines()[-1] and about[-1].startswith(f'interrupted ({name}) after ')
  assert f'checkpoint saved in {checkpoint.directory(workdir)}; run the same command' in about[-1]
  assert checkpoint.latest(workdir) is not None
  assert not os.path.exists(os.path.join(workdir, results.RESULTS_FILE))


def test_signals_save_and_the_same_command_resumes(tmp_path, uninterrupted):
  """SIGTERM after the first epoch, SIGINT after the resumed run's second: each saves
  and stops with one line; the third run finishes as if never stopped."""
  workdir = str(tmp_path / 'run')
  interrupt(workdir, 'SIGTERM', 143, after_epochs=1)
  interrupt(workdir, 'SIGINT', 130, after_epochs=2)
  returncode, err = finish(cli(workdir))
  assert returncode == 0, err
  assert 'resuming from the checkpoint after epoch' in err
  assert_same_results(workdir, uninterrupted)
  assert checkpoint.latest(workdir) is None


def steps_config(mode: str, **overrides):
  """2 models, 2 epochs of 21 steps; checkpoints only by the step rule."""
  fields = {'seeds': 1, 'train__epochs': 2, 'train__checkpoint_minutes': 0.0,
            'train__checkpoint_every_steps': 5, 'data__input_mode': mode,
            'data__val_fraction': 0.2}
  return tiny_config(**dict(fields, **overrides))


@pytest.mark.parametrize('mode', ['resident', 'streamed'])
def test_a_checkpoint_inside_an_epoch_resumes_to_the_same_results(tmp_path, monkeypatch, mode):
  config = steps_config(mode)
  whole_dir = str(tmp_path / 'whole')
  whole = trainer.run(steps_config(mode, train__checkpoint_every_steps=0), whole_dir)

  workdir = str(tmp_path / 'resumed')
  run_until_first_checkpoint(config, workdir, monkeypatch)
  meta = checkpoint.read_meta(workdir, config)
  assert (meta['epoch'], meta['step']) == (0, 5)
  assert np.asarray(meta['epoch_steps']['loss']['values']).shape == (5, 2)
  assert logged_epochs(workdir) == []
  # Other checkpoint rules resume the same run (they never change results).
  resumed = trainer.run(steps_config(mode, train__checkpoint_every_steps=7), workdir)

  for key in ('test_predictions', 'val_predictions', 'train_loss', 'train_accuracy',
              'test_accuracy_at_eval', 'diverged', 'curve_epochs', 'eval_epochs'):
    np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
  assert_same_results(workdir, whole_dir)
  resolved = json.load(open(os.path.join(workdir, 'config.json')))['resolved']
  assert resolved['checkpoint'] == {'every_epochs': 0, 'every_steps': 7, 'minutes': 0.0,
                                    'saves_at': 'steps', 'on_signals': ['SIGTERM', 'SIGINT']}


def test_inside_an_epoch_under_scan_the_epoch_finishes_step_by_step(tmp_path, monkeypatch):
  # A checkpoint of the python loop (CPU) resumed where 'auto' resolves to scan.
  config = steps_config('resident', train__epochs=1, train__strategy='unroll')
  whole = trainer.run(config, str(tmp_path / 'whole'))
  workdir = str(tmp_path / 'resumed')
  run_until_first_checkpoint(config, workdir, monkeypatch)
  monkeypatch.setattr(model_axis, 'resolve_loop', lambda *args, **kwargs: 'scan')
  resumed = trainer.run(config, workdir)
  assert json.load(open(os.path.join(workdir, 'config.json')))['resolved']['loop'] == 'scan'
  for key in ('test_predictions', 'val_predictions', 'train_loss', 'train_accuracy'):
    np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)


def test_the_time_rule_saves_at_the_next_step(tmp_path, monkeypatch):
  config = steps_config('resident', train__checkpoint_every_steps=0,
                        train__checkpoint_minutes=1e-9)
  workdir = str(tmp_path)
  run_until_first_checkpoint(config, workdir, monkeypatch)
  meta = checkpoint.read_meta(workdir, config)
  assert (meta['epoch'], meta['step']) == (0, 1)


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def checkpointer(loop_kind='python', num_epochs=3, steps=10, **rules):
  train = types.SimpleNamespace(**dict(dict(checkpoint_every=0, checkpoint_every_steps=0,
                                            checkpoint_minutes=0.0, epochs=num_epochs), **rules))
  saved, clock = [], Clock()
  c = interrupts.Checkpointer(train, steps, loop_kind,
                          lambda e, s, state, epoch_steps: saved.append((e, s)),
                          interrupts.Signals(), 'DIR', clock)
  return c, saved, clock


def walk(c, clock, epochs=3, steps=10, scan=False, seconds_per_step=1.0):
  """Drives the checkpointer as train_epochs does."""
  per_step = [{'loss': np.zeros(1, np.float32)}]
  c.start(0, 0)
  for epoch in range(epochs):
    for step in range(1, steps + 1):
      clock.now += seconds_per_step
      if step < steps and not scan:
        c.at_step(epoch, step, None, per_step * step)
    c.at_epoch_end(epoch + 1, None)


def test_the_rules_of_when_to_save():
  c, saved, clock = checkpointer(checkpoint_minutes=0.25)  # 15 s: every 15th step
  walk(c, clock)
  assert saved == [(1, 5)]  # the next 15 s end with the last epoch: no checkpoint then
  c, saved, clock = checkpointer(checkpoint_every_steps=4, checkpoint_every=2)
  walk(c, clock)
  assert saved == [(0, 4), (0, 8), (1, 2), (1, 6), (2, 0), (2, 4), (2, 8)]
  # scan: an epoch is one call, so a rule that fires inside it saves at its end
  c, saved, clock = checkpointer('scan', checkpoint_every_steps=15)
  walk(c, clock, scan=True)
  assert saved == [(2, 0)]  # step 15 is in the second epoch; step 30 ends the last
  c, saved, clock = checkpointer('scan', checkpoint_every_steps=4)
  walk(c, clock, scan=True)
  assert saved == [(1, 0), (2, 0)]
  train = types.SimpleNamespace(checkpoint_every=0, checkpoint_every_steps=4,
                                checkpoint_minutes=10.0)
  assert interrupts.checkpoint_policy(train, 'scan', c.signals) == {
      'every_epochs': 0, 'every_steps': 4, 'minutes': 10.0, 'saves_at': 'epoch ends',
      'on_signals': []}


def test_a_signal_saves_at_the_next_step_and_stops():
  c, saved, clock = checkpointer()
  with c.signals:
    c.start(1, 3)
    os.kill(os.getpid(), signal.SIGTERM)
    while c.signals.received is None:  # the handler runs in the main thread, soon after
      time.sleep(0.001)
    c.signals._handle(signal.SIGINT, None)  # a second signal changes nothing
    with pytest.raises(interrupts.Interrupted) as stop:
      c.at_step(1, 4, None, [{'loss': np.zeros(1, np.float32)}] * 4)
  assert saved == [(1, 4)] and stop.value.code == 143
  assert str(stop.value) == ('interrupted (SIGTERM) after step 4/10 of epoch 2/3: checkpoint '
                             'saved in DIR; run the same command again to resume')


def test_signals_before_training_stop_at_once_and_handlers_come_back():
  before = signal.getsignal(signal.SIGINT)
  with interrupts.Signals() as signals:
    assert signals.caught == ['SIGTERM', 'SIGINT']
    with pytest.raises(interrupts.Interrupted) as stop:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs in the main thread, between bytecodes
  assert stop.value.code == 130 and 'before training began' in str(stop.value)
  assert signal.getsignal(signal.SIGINT) is before


def test_a_damaged_checkpoint_resumes_from_the_one_before_or_afresh(tmp_path, monkeypatch,
                                                                    capsys):
  # Stopped after its second checkpoint (steps 5 and 10); the newest one truncated.
  config = steps_config('resident')
  whole_dir = str(tmp_path / 'whole')
  trainer.run(steps_config('resident', train__checkpoint_every_steps=0), whole_dir)
  workdir, real_save, saved = str(tmp_path / 'resumed'), checkpoint.save, []

  def save_twice_then_crash(*args, **kwargs):
    saved.append(real_save(*args, **kwargs))
    if len(saved) == 2:
      raise Interrupted

  monkeypatch.setattr(checkpoint, 'save', save_twice_then_crash)
  with pytest.raises(Interrupted):
    trainer.run(config, workdir)
  monkeypatch.setattr(checkpoint, 'save', real_save)
  for path in saved[1:]:
    state_file = max((os.path.join(root, name) for root, _, names in os.walk(path)
                      for name in names), key=os.path.getsize)
    with open(state_file, 'r+b') as f:
      f.truncate(1)
  capsys.readouterr()
  trainer.run(config, workdir)
  err = capsys.readouterr().err
  assert 'damaged checkpoint' in err and 'resuming from step_000000005 instead' in err
  assert 'resuming from the checkpoint after epoch 0, step 5 of the next' in err
  assert_same_results(workdir, whole_dir)


def test_overwrite_works_on_a_damaged_checkpoint(tmp_path, monkeypatch, capsys):
  config = steps_config('resident', train__epochs=1)
  workdir = str(tmp_path)
  run_until_first_checkpoint(config, workdir, monkeypatch)
  os.remove(os.path.join(checkpoint.latest(workdir), 'state', 'manifest.ocdbt'))
  trainer.run(config, workdir, overwrite=True)
  assert 'starting afresh' in capsys.readouterr().err
  assert checkpoint.latest(workdir) is None
  assert os.path.isfile(os.path.join(workdir, results.RESULTS_FILE))


def test_a_signal_inside_a_gc_callback_is_delivered_after_it():
  """An exception raised in a garbage-collector callback (JAX has one) would be printed and
  lost: the handler sends the signal again, and it stops the run just after."""
  fired = []

  def callback(phase, info):
    if phase == 'start' and not fired:
      fired.append(phase)
      signals._handle(signal.SIGINT, sys._getframe())  # must not raise here

  with interrupts.Signals() as signals:
    gc.callbacks.insert(0, callback)
    try:
      with pytest.raises(interrupts.Interrupted):
        gc.collect()
        time.sleep(5)  # the signal sent again lands here
    finally:
      gc.callbacks.remove(callback)
  assert fired
