"""TensorBoard summaries and profiles (summaries.py), read back with TensorBoard's own
event reader, and the versions a run records."""
import glob
import json
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import tiny_config

from classbias_jax import results
from classbias_jax.train import summaries, trainer
from classbias_jax.errors import ConfigError

pytest.importorskip('tensorboard')
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(folder: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of one TensorBoard run folder, as TensorBoard loads it."""
  events = EventAccumulator(folder, size_guidance={'scalars': 0})
  events.Reload()
  return {tag: {e.step: e.value for e in events.Scalars(tag)}
          for tag in events.Tags()['scalars']}


@pytest.fixture(scope='module')
def watched_run(tmp_path_factory):
  """A tiny study (2 values x 2 seeds, 2 epochs, evaluated each) with a profile of steps
  3-5, on the step-by-step loop so the trace starts and stops at those steps."""
  workdir = str(tmp_path_factory.mktemp('watched'))
  config = tiny_config(train__epochs=2, train__loop='python', train__profile_steps=(3, 3))
  trainer.run(config, workdir)
  return workdir, config


def test_event_files_hold_every_model_and_class(watched_run):
  workdir, config = watched_run
  r = results.load_results(workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  board = summaries.directory(workdir)
  names = summaries.run_names(SimpleNamespace(name=config.sweep.name,
                                              values=r['sweep_values']))
  assert names == ['weight_decay=0.0', 'weight_decay=0.05']
  tags = summaries.class_tags(r['class_names'])
  assert tags[3] == 'test_per_class/3_3'
  for v, name in enumerate(names):
    per_seed = [scalars(os.path.join(board, name, f'seed_{seed}')) for seed in r['seeds']]
    mean = scalars(os.path.join(board, name, 'mean'))
    for s, run in enumerate(per_seed):
      m = v * len(r['seeds']) + s
      for tag, key in (('train/loss', 'train_loss'), ('test/accuracy', 'test_accuracy')):
        assert sorted(run[tag]) == [1, 2]
        np.testing.assert_allclose([run[tag][e] for e in (1, 2)],
                                   [rec[key][m] for rec in records], rtol=1e-6)
      # The last evaluation's per-class accuracy is the one in results.npz.
      np.testing.assert_allclose([run[t][2] for t in tags], r['per_class_accuracy'][v, s],
                                 rtol=1e-6)
    np.testing.assert_allclose([mean[t][2] for t in tags],
                               r['per_class_accuracy'][v].mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean['train/accuracy'][1],
                               np.mean([run['train/accuracy'][1] for run in per_seed]),
                               rtol=1e-6)


def test_profile_trace_and_versions_recorded(watched_run):
  workdir, _ = watched_run
  traces = glob.glob(os.path.join(summaries.directory(workdir), summaries.PROFILE_DIR,
                                  'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  resolved = json.load(open(os.path.join(workdir, 'config.json')))['resolved']
  assert resolved['tensorboard'] is True
  assert resolved['versions']['jax'] == jax.__version__
  assert resolved['versions']['numpy'] == np.__version__


def sweep_of(values, seeds):
  return SimpleNamespace(name='aug.crop_scale_min', values=np.asarray(values, float),
                         seeds=np.asarray(seeds))


def test_means_skip_diverged_seeds_and_resume_drops_repeated_epochs(tmp_path):
  """Epochs 1-3 written, then a run resumed after epoch 1 writes 2-3 again: TensorBoard
  keeps epoch 1 of the first try and epochs 2-3 of the second."""
  sweep, workdir = sweep_of([0.08, 1.0], [0, 1]), str(tmp_path)
  first = summaries.Board(workdir, sweep, ['cat', 'dog'])
  for epoch in (1, 2, 3):
    first.scalars(epoch, {'train/loss': np.array([1.0, 3.0, 5.0, np.nan]) * epoch})
  first.close()
  with summaries.Board(workdir, sweep, ['cat', 'dog'], start_epoch=1) as second:
    for epoch in (2, 3):
      second.scalars(epoch, {'train/loss': np.array([10.0, 30.0, 50.0, np.nan]) * epoch})
  loss = lambda run: scalars(os.path.join(workdir, 'tensorboard', run))['train/loss']
  assert loss('crop_scale_min=0.08/seed_1') == {1: 3.0, 2: 60.0, 3: 90.0}
  assert loss('crop_scale_min=0.08/mean') == {1: 2.0, 2: 40.0, 3: 60.0}
  assert loss('crop_scale_min=1.0/mean') == {1: 5.0, 2: 100.0, 3: 150.0}  # seed 1 diverged


def test_profiler_steps_boundaries(tmp_path, monkeypatch):
  """A trace of (5, 3) on 4-step epochs starts after step 5 is reached and stops at 8."""
  calls = []
  monkeypatch.setattr(jax.profiler, 'start_trace', lambda d: calls.append(('start', d)))
  monkeypatch.setattr(jax.profiler, 'stop_trace', lambda: calls.append(('stop',)))
  profiler = summaries.Profiler((5, 3), steps_per_epoch=4, epochs=3, workdir=str(tmp_path))
  seen = []

  def epoch_fn(state, knobs, keys, epoch, first_step=0, done=None, at_step=None):
    for step in range(first_step, 4):  # as epochs._python_epoch: at_step between steps
      seen.append((epoch, step, len(calls)))
      if step + 1 < 4:
        at_step(epoch, step + 1, state, [])
    return state, {}
  wrapped = profiler.wrap(epoch_fn)
  for epoch in range(3):
    wrapped(np.zeros(1), None, None, epoch)
  profiler.close()
  traced = [(e, s) for e, s, n in seen if n == 1]  # steps run while the trace was on
  assert traced == [(1, 1), (1, 2), (1, 3)]  # global steps 5, 6, 7
  assert [c[0] for c in calls] == ['start', 'stop']
  assert calls[0][1] == os.path.join(str(tmp_path), 'tensorboard', 'profile')


def test_profiler_rejects_steps_past_the_run(tmp_path):
  with pytest.raises(ConfigError, match='has 12 steps'):
    summaries.Profiler((12, 1), steps_per_epoch=4, epochs=3, workdir=str(tmp_path))


def test_no_summaries_when_off_not_lead_or_not_installed(tmp_path, monkeypatch, capsys):
  workdir, sweep = str(tmp_path), sweep_of([1.0], [0])
  off = tiny_config(train__tensorboard=False)
  assert summaries.open_board(off, workdir, sweep, ['a']) is None
  assert summaries.open_board(tiny_config(), workdir, sweep, ['a'], lead=False) is None
  assert capsys.readouterr().err == ''
  monkeypatch.setattr(summaries, 'RecordWriter', None)
  assert summaries.open_board(tiny_config(), workdir, sweep, ['a']) is None
  assert 'tensorboard package is not installed' in capsys.readouterr().err
  assert not os.path.exists(summaries.directory(workdir))
