"""The results contract: hand-checked metrics, atomic writes, validation."""
import os

import numpy as np
import pytest

from classbias_jax import files, results
from classbias_jax.errors import ResultsError


def _arrays(v=2, s=3, c=4, n=12):
  labels = np.arange(n) % c
  preds = np.tile(labels, (v, s, 1))
  preds[1, :, 0] = 1  # one class-0 image wrong at the second value
  return {
      'test_labels': labels, 'test_predictions': preds,
      'per_class_accuracy': results.class_accuracy(preds == labels, labels, c),
      'mean_accuracy': (preds == labels).mean(-1),
      'sweep_name': np.asarray('optim.weight_decay'), 'sweep_values': np.arange(v, dtype=float),
      'seeds': np.arange(s), 'class_names': np.asarray([f'c{i}' for i in range(c)]),
  }


def test_per_class_accuracy_by_hand():
  labels = np.array([0, 0, 1, 1, 1, 2])
  preds = np.array([0, 1, 1, 1, 0, 2])
  np.testing.assert_allclose(results.class_accuracy(preds == labels, labels, 4)[:3], [0.5, 2 / 3, 1.0])
  assert np.isnan(results.class_accuracy(preds == labels, labels, 4)[3])
  conf = results.confusion_matrices(labels, preds, 3)
  np.testing.assert_array_equal(conf, [[1, 1, 0], [1, 2, 0], [0, 0, 1]])


def test_round_trip(tmp_path):
  arrays = _arrays()
  results.save_results(str(tmp_path), arrays)
  back = results.load_results(str(tmp_path))
  np.testing.assert_array_equal(back['test_predictions'], arrays['test_predictions'])
  assert back['per_class_accuracy'][1, 0, 0] == pytest.approx(2 / 3)
  confusion = results.confusion_matrices(back['test_labels'], back['test_predictions'], 4)
  assert confusion.shape == (2, 3, 4, 4)
  assert [p.name for p in tmp_path.iterdir()] == ['results.npz']  # no temp files left


def test_bad_results_are_refused(tmp_path):
  with pytest.raises(ResultsError, match='no results.npz'):
    results.load_results(str(tmp_path))
  (tmp_path / 'results.npz').write_bytes(b'PK\x03\x04 truncated')
  with pytest.raises(ResultsError, match='unreadable'):
    results.load_results(str(tmp_path))
  np.savez(tmp_path / 'results.npz', foo=np.zeros(3))
  with pytest.raises(ResultsError, match='not a classbias_jax results file'):
    results.load_results(str(tmp_path))
  bad = _arrays()
  bad['mean_accuracy'] = bad['mean_accuracy'][:, :2]
  with pytest.raises(ResultsError, match='mean_accuracy'):
    results.save_results(str(tmp_path / 'new'), bad)
  assert not (tmp_path / 'new' / 'results.npz').exists()


def test_files_are_written_readable_by_all(tmp_path):
  """Atomic writes go through a private temporary file; the result gets the usual mode."""
  umask = os.umask(0o022)
  try:
    files.write_json(str(tmp_path / 'config.json'), {'a': 1})
    files.write_bytes(str(tmp_path / 'metrics.jsonl'), b'{}\n')
  finally:
    os.umask(umask)
  for name in ('config.json', 'metrics.jsonl'):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name
