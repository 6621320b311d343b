"""The shared shift, the beyond-shift test, flipped images and the class-dependence report,
checked by hand on tiny arrays and end to end on synthetic results."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

from classbias_jax import configs, data, report
from classbias_jax.audit import analysis, dependence, dependence_figures, shift
from classbias_jax.data import class_words
from classbias_jax.errors import DataUnavailable
from classbias_jax.results import load_results, save_results
from test_analysis import make_results

DATA = pathlib.Path(__file__).parent / 'data'


def test_shared_shift_by_hand():
  # 3 classes x 2 images, 2 seeds. Class means .75, -.25, -.75: median -.25. Seed medians
  # 0 and -.5: variance .125 / 2 seeds = .0625. Each class's image means differ by +-.25
  # around its mean: variance .125 / 2 images = .0625, times pi/2 over 3 classes.
  diff = np.array([[1, 1, 0, 0, -1, 0], [1, 0, 0, -1, -1, -1]], np.float64)
  labels = np.array([0, 0, 1, 1, 2, 2])
  out = shift.shared_shift(diff, labels, 3)
  seed_var, image_var = 0.0625, np.pi / 2 * 0.0625 / 3
  var = seed_var + image_var
  df = var ** 2 / (seed_var ** 2 / 1 + image_var ** 2 / 3)
  assert out['effect'] == pytest.approx(-0.25)
  assert out['se'] == pytest.approx(np.sqrt(var))
  assert out['df'] == pytest.approx(df)
  assert out['high'] - out['effect'] == pytest.approx(sps.t.ppf(0.975, df) * np.sqrt(var))
  one = shift.shared_shift(diff[:1], labels, 3)
  assert one['effect'] == 0 and np.isnan(one['se'])  # one seed: no interval


def test_beyond_shift_by_hand():
  test = {'effect': np.array([-0.3, 0.1, 0.0]), 'se': np.array([0.1, 0.0, 0.1]),
          'df': np.array([4.0, 4.0, 4.0]), 'p': np.array([0.05, 0.5, np.nan])}
  shared = {'effect': -0.1, 'se': 0.05, 'df': 9.0}
  out = shift.beyond_shift(test, shared)
  np.testing.assert_allclose(out['effect'], [-0.2, 0.2, 0.1])
  np.testing.assert_allclose(out['se'], np.sqrt([0.0125, 0.0025, 0.0125]))
  # Welch-Satterthwaite: 0.0125^2 / (0.01^2 / 4 + 0.0025^2 / 9); only the shift's for class 1.
  np.testing.assert_allclose(out['df'][:2], [0.0125 ** 2 / (0.01 ** 2 / 4 + 0.0025 ** 2 / 9), 9])
  assert out['p'][1] == pytest.approx(2 * sps.t.sf(0.2 / 0.05, 9))
  assert np.isnan(out['p'][2])  # no class test, no beyond-shift test


def test_flipped_images_by_hand():
  # Class 0 has images 0-2; at the reference every seed gets them right. At the value,
  # image 0 is wrong in seeds 0 and 1 (predicted 2 both times), image 1 in seed 2 (as 1).
  labels = np.array([0, 0, 0, 1])
  predictions = np.zeros((2, 3, 4), np.int64)
  predictions[:, :, 3] = 1
  predictions[1, 0, 0] = predictions[1, 1, 0] = 2
  predictions[1, 2, 1] = 1
  correct = predictions == labels
  out = dependence.flipped_images(correct, predictions, np.ones((2, 3), bool), labels, 1, 0, 0)
  assert out == [{'index': 0, 'seeds': 2, 'to': 2}, {'index': 1, 'seeds': 1, 'to': 1}]


def test_hurt_while_the_mean_improves_reads_both_directions():
  beyond = lambda hurt, helped: {'hurt': hurt, 'helped': helped}  # noqa: E731
  values = [{'value': 0.0, 'mean_accuracy': 0.70, 'beyond_shift': beyond(['a'], ['b'])},
            {'value': 1.0, 'mean_accuracy': 0.75, 'beyond_shift': None},  # the reference
            {'value': 2.0, 'mean_accuracy': 0.80, 'beyond_shift': beyond(['c'], ['d'])}]
  out = dependence.hurt_while_mean_improves(values, 1)
  # 0 -> 1 raises the mean: who 0 helps beyond the shift (b) loses on that move.
  assert out == [{'from': 0.0, 'to': 1.0, 'mean_change': 0.05, 'classes': ['b']},
                 {'from': 1.0, 'to': 2.0, 'mean_change': 0.05, 'classes': ['c']}]


def lifted(seeds=6, classes=12, seed=0):
  """Value 1 lifts every class from ~60% to ~80% but drops c0 from 60% to 30%."""
  rng = np.random.default_rng(seed)
  wobble = rng.choice([-0.03, 0.0, 0.03], size=(2, seeds, classes))
  acc = np.stack([0.6 + wobble[0], 0.8 + wobble[1]])
  acc[1, :, 0] = 0.3
  return make_results(acc, images_per_class=100, sweep_values=[0.0, 1e-3], seed=seed)


def test_analysis_contract_and_the_report_lead(tmp_path):
  """Absolute tests flag c0 hurt and most classes helped; beyond the +20-point shift only
  c0 is hurt and none is helped; the opening names c0 as hurt while the mean improves."""
  save_results(str(tmp_path), lifted())
  report.write(str(tmp_path), reference=0.0, num_bootstrap=20)
  stats = json.loads((tmp_path / 'analysis.json').read_text())
  ref, entry = stats['values']
  assert ref['beyond_shift'] is None and ref['class_dependence'] is None
  assert set(entry['beyond_shift']) == {'shift', 'per_class', 'hurt', 'helped'}
  assert set(entry['beyond_shift']['shift']) == {'effect', 'low', 'high'}
  assert set(entry['beyond_shift']['per_class']) == {'effect', 'low', 'high', 'p', 'q'}
  assert set(entry['class_dependence']) == {'tau', 'low', 'high'}
  assert entry['hurt'] == ['c0'] and len(entry['helped']) >= 6
  assert entry['beyond_shift']['hurt'] == ['c0'] and entry['beyond_shift']['helped'] == []
  shared = entry['beyond_shift']['shift']
  assert shared['low'] <= 0.2 <= shared['high'] and abs(shared['effect'] - 0.2) < 0.02
  assert entry['beyond_shift']['per_class']['effect'][0] == pytest.approx(
      entry['per_class']['effect'][0] - shared['effect'], abs=1e-5)
  assert entry['class_dependence']['low'] > 0.05  # one class 50 points off the rest
  assert stats['hurt_while_mean_improves'] == [
      {'from': 0.0, 'to': 0.001, 'mean_change': pytest.approx((11 * 0.2 - 0.3) / 12, abs=0.01),
       'classes': ['c0']}]
  assert entry['flipped_images'][0]['class'] == 'c0'
  text = (tmp_path / 'report.md').read_text()
  assert text.index('**Hurt while the mean improves:**') < text.index('## Summary')
  section = text[text.index('### `weight_decay=0.001`'):]
  assert section.index('Hurt beyond the shift (1)') < section.index('Absolute effects')
  assert 'Helped beyond the shift' not in section
  assert (tmp_path / 'figures' / 'class_dependence.png').stat().st_size > 1000


def test_the_gallery_rereads_the_run_s_test_images(tmp_path):
  """A run on scikit-learn's digits where class 3 loses 60% of its images at value 1: the
  gallery re-reads those images from the dataset and draws them."""
  cfg = configs.base_config()
  cfg.data.name = 'digits'
  cfg.sweep.name, cfg.sweep['values'] = 'aug.erase_prob', (0.0, 0.5)  # results.npz's sweep
  dataset = data.load(cfg.data)
  labels = dataset.test_labels
  rng = np.random.default_rng(0)
  predictions = np.tile(labels, (2, 4, 1)).astype(np.int32)  # [V, S, N]: all right
  threes = np.flatnonzero(labels == 3)
  for s in range(4):
    predictions[1, s, rng.choice(threes, int(0.6 * threes.size), replace=False)] = 8
  correct = predictions == labels
  per_class = np.stack([[np.bincount(labels, c, 10) / np.bincount(labels, minlength=10)
                         for c in row] for row in correct]).astype(np.float32)
  save_results(str(tmp_path), {
      'per_class_accuracy': per_class, 'mean_accuracy': correct.mean(2),
      'test_labels': labels, 'test_predictions': predictions, 'sweep_name': 'aug.erase_prob',
      'sweep_values': np.array([0.0, 0.5]), 'seeds': np.arange(4),
      'class_names': np.array(dataset.class_names)})
  (tmp_path / 'config.json').write_text(json.dumps(cfg.to_dict()))
  report.write(str(tmp_path), reference=0.0, num_bootstrap=20)
  stats = json.loads((tmp_path / 'analysis.json').read_text())
  entry = stats['values'][1]
  assert entry['beyond_shift']['hurt'] == ['3']
  shown = entry['flipped_images'][0]['images']
  assert all(labels[im['index']] == 3 and im['to'] == '8' for im in shown)
  assert shown[0]['seeds'] >= shown[-1]['seeds']
  assert dependence_figures.gallery_indices(stats)[0] == shown[0]['index']
  assert (tmp_path / 'figures' / 'flipped_images.png').stat().st_size > 1000
  assert '![images turned from right to wrong]' in (tmp_path / 'report.md').read_text()
  images, got = data.read_test_images(cfg.data, [im['index'] for im in shown])
  assert (got == 3).all()
  np.testing.assert_array_equal(images[0], dataset.test_images[shown[0]['index']])


def test_a_words_file_names_the_classes(tmp_path):
  """ImageNet's two words-file layouts, a shared first synonym kept apart by its id, and a
  folder dataset named through data.class_words in both input modes."""
  words = tmp_path / 'words.txt'
  words.write_text('n01440764\ttench, Tinca tinca\nn02012849 crane\nn03126707 crane\n\n')
  table = class_words.read_words(str(words))
  assert table == {'n01440764': 'tench', 'n02012849': 'crane', 'n03126707': 'crane'}
  assert class_words.readable(['n01440764', 'n02012849', 'n03126707', 'n099'], table) == (
      'tench', 'crane (n02012849)', 'crane (n03126707)', 'n099')
  for split, count in (('train', 3), ('test', 2)):
    for wnid in ('n01440764', 'n02012849'):
      (tmp_path / 'images' / split / wnid).mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (4, 4), (i * 40, 0, 0)).save(
            tmp_path / 'images' / split / wnid / f'{i}.png')
  cfg = configs.base_config().data
  cfg.update(name=f'folder:{tmp_path / "images"}', class_words=str(words))
  assert data.load(cfg).class_names == ('tench', 'crane')  # unique here: no id needed
  assert data.open_streamed(cfg).class_names == ('tench', 'crane')
  cfg.class_words = str(tmp_path / 'missing.txt')
  with pytest.raises(DataUnavailable, match='data.class_words: cannot read'):
    data.load(cfg)


def test_the_planted_colour_study_is_class_dependent_at_full_strength():
  """configs/color.py:runlocal's results (8 seeds, kept in tests/data): beyond the shift
  exactly the three colour classes are hurt at full strength, no class is helped at any
  strength, and the spread between classes is largest at full strength."""
  results = load_results(str(DATA / 'color_runlocal'))
  stats = analysis.analyze(results, num_bootstrap=10, num_splits=1)
  by_value = {v['value']: v for v in stats['values']}
  assert stats['reference']['value'] == 0.25
  assert sorted(by_value[1.0]['beyond_shift']['hurt']) == [
      'color-orange', 'color-red', 'color-yellow']
  assert all(v['beyond_shift']['helped'] == [] for v in stats['values'] if v['beyond_shift'])
  assert all(n.startswith('color-') for v in stats['values'] if v['beyond_shift']
             for n in v['beyond_shift']['hurt'])
  taus = {k: v['class_dependence']['tau'] for k, v in by_value.items() if v['beyond_shift']}
  assert max(taus, key=taus.get) == 1.0 and taus[1.0] > 0.1 and taus[0.0] < 0.01
