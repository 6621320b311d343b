"""Beyond-the-shift flags and the between-class spread under a shift-only null and planted drops.

The generator (docs/statistics.md, "Class dependence"): C classes at accuracies spread
over 45-95%, each with its own run-to-run variation (a logit shift per seed shared by the
sweep values, and a fresh one per run, with four different sizes among the classes);
every test image has a fixed logit difficulty. At the first sweep value every class's
expected accuracy moves by the same SHIFT points (the shift-only null); planted classes
move PLANTED_DROP more. Each image is then right at random given its probability; a wrong
prediction goes to one of the next three classes.

The paper-scale measurement of the issue (1000 classes x 20 seeds x 7 values, 50 images
per class) runs with CLASSBIAS_SLOW=1 and prints the table of docs/statistics.md.
"""
from __future__ import annotations

import json
import os
import resource
import time

import numpy as np
import pytest
from scipy import special, stats as sps

from classbias_jax import report
from classbias_jax.audit import effects, replication, shift, stats
from classbias_jax.results import class_accuracy, save_results

SHIFT = -0.05  # every class, at the first sweep value
PLANTED_DROP = -0.20  # planted classes, beyond the shift
DIFFICULTY_SD = 1.5
RUN_TAUS = np.array([0.05, 0.1, 0.15, 0.25])  # logit sd of a seed's and of a run's shift
VALUES = (0.08, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
_GRID = np.linspace(-8, 10, 2000)
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(30)


def _difficulty(n: int) -> np.ndarray:
  return DIFFICULTY_SD * sps.norm.ppf((np.arange(n) + 0.5) / n)


def _accuracy_curves(n: int) -> np.ndarray:
  """Expected accuracy [len(RUN_TAUS), grid] of a class at logit offset _GRID, over its
  images and its runs' shifts (seed + run: sd sqrt(2) tau)."""
  d = _difficulty(n)
  out = []
  for tau in RUN_TAUS:
    z = _GRID[:, None, None] + np.sqrt(2) * tau * _NODES[None, :, None] + d
    out.append(special.expit(z).mean(2) @ _WEIGHTS / _WEIGHTS.sum())
  return np.array(out)


def _offset(curves: np.ndarray, level: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
  """The logit offset that gives each class its expected accuracy [C]."""
  return np.array([np.interp(a, curves[t], _GRID) for t, a in zip(level, accuracy)])


def simulate(rng, classes: int, seeds: int, images: int, values: int = 2, planted: int = 0,
             drop: float = PLANTED_DROP) -> dict:
  """A results dict (results.load's keys) of the generator above; planted classes first
  among a random order are in `planted_classes`."""
  level = rng.integers(0, len(RUN_TAUS), classes)
  accuracy = rng.uniform(0.45, 0.95, classes)
  curves = _accuracy_curves(images)
  target = np.tile(accuracy, (values, 1))
  target[0] += SHIFT
  chosen = rng.choice(classes, planted, replace=False)
  target[0, chosen] += drop
  offsets = np.array([_offset(curves, level, t) for t in target])  # [V, C]
  tau = RUN_TAUS[level]
  logits = offsets[:, None] + tau * (rng.normal(size=(1, seeds, classes))
                                     + rng.normal(size=(values, seeds, classes)))
  labels = np.repeat(np.arange(classes), images)
  z = logits.astype(np.float32)[:, :, labels] + np.tile(_difficulty(images), classes).astype(
      np.float32)
  correct = rng.random(z.shape, np.float32) < special.expit(z)
  wrong = (labels + rng.integers(1, 4, z.shape)) % classes
  predictions = np.where(correct, labels, wrong).astype(np.int32)
  per_class = class_accuracy(correct, labels, classes).astype(np.float32)
  return {'per_class_accuracy': per_class, 'mean_accuracy': correct.mean(2),
          'test_labels': labels.astype(np.int32), 'test_predictions': predictions,
          'sweep_name': np.asarray('aug.crop_scale_min'),
          'sweep_values': np.asarray(VALUES[:values] if values <= len(VALUES) else
                                     np.linspace(0.08, 1, values)),
          'seeds': np.arange(seeds), 'class_names': np.asarray([f'c{c}' for c in range(classes)]),
          'num_classes': classes, 'planted_classes': np.sort(chosen)}


def beyond(results: dict, value: int = 0, reference: int = 1) -> dict:
  """Shift, beyond-shift test (BH over this one comparison) and spread of value vs reference."""
  labels = results['test_labels']
  correct = results['test_predictions'] == labels
  valid = np.ones(correct.shape[:2], bool)
  diff = replication.paired_difference(correct, valid, value, reference)
  c = results['num_classes']
  test = effects.compare(diff, labels, c)
  shared = shift.shared_shift(diff, labels, c)
  out = shift.beyond_shift(test, shared)
  q = stats.bh_qvalues(out['p'])
  return {'shift': shared, **out, 'q': q, 'hurt': (q < 0.05) & (out['effect'] < 0),
          'helped': (q < 0.05) & (out['effect'] > 0),
          'spread': shift.between_class_spread(test['effect'], test['se'], test['n'],
                                               diff.shape[0]),
          'absolute_hurt': int(np.sum(effects.flag_family([test])[0]['hurt']))}


# ------------------------------------------------------------------------ in the suite

def test_a_shift_only_null_holds_the_level():
  """200 classes x 6 seeds x 40 images, every class 5 points lower at value 0: the
  beyond-shift test almost never flags any (any flag in at most 3 of 20 sweeps; under a
  complete null the FDR is the chance of any flag, 5%), the shift is found, tau < 1 point."""
  rng = np.random.default_rng(0)
  any_flag, shifts, taus = 0, [], []
  for _ in range(20):
    out = beyond(simulate(rng, classes=200, seeds=6, images=40))
    any_flag += bool(out['hurt'].any() or out['helped'].any())
    shifts.append(out['shift']['effect'])
    taus.append(out['spread']['tau'])
  assert any_flag <= 3
  assert abs(np.mean(shifts) - SHIFT) < 0.01
  assert np.mean(taus) < 0.01  # under a point


def test_the_shift_interval_covers_the_shift():
  """The shift's 95% interval covers the true shift of the null in most sweeps."""
  rng = np.random.default_rng(1)
  covered = sum(out['shift']['low'] <= SHIFT <= out['shift']['high'] for out in (
      beyond(simulate(rng, classes=100, seeds=6, images=40)) for _ in range(20)))
  assert covered >= 17


def test_planted_deviations_are_found_and_the_spread_sees_them():
  """10 of 200 classes 20 points below the shift (20 seeds x 50 images, the issue's design):
  found (precision and recall >= 0.9), the shift stays near -5 points, and the spread's
  interval excludes 0."""
  rng = np.random.default_rng(2)
  results = simulate(rng, classes=200, seeds=20, images=50, planted=10)
  out = beyond(results)
  planted = np.isin(np.arange(200), results['planted_classes'])
  found = out['hurt']
  assert np.sum(found & planted) >= 9 and np.sum(found & ~planted) <= 1
  assert not out['helped'].any()
  assert abs(out['shift']['effect'] - SHIFT) < 0.015
  assert out['spread']['low'] > 0.01 and out['spread']['tau'] > 0.03


def test_the_spread_recovers_a_known_spread():
  """1000 effects drawn with tau = 4 points around noise of 1-6 points, 40 times: the mean
  estimate is near 4 and the 95% interval covers 4 in at least 34 of 40; with tau = 0
  the estimate is near 0 and the interval starts at 0 in most draws."""
  rng = np.random.default_rng(3)
  fits, nulls = [], []
  for _ in range(40):
    se = rng.uniform(0.01, 0.06, 1000)
    fits.append(shift.between_class_spread(rng.normal(-0.05, 0.04, 1000) + rng.normal(0, se),
                                           se, np.full(1000, 50.0), 10))
    nulls.append(shift.between_class_spread(rng.normal(0, se), se, np.full(1000, 50.0), 10))
  assert abs(np.mean([f['tau'] for f in fits]) - 0.04) < 0.002
  assert sum(f['low'] <= 0.04 <= f['high'] for f in fits) >= 34
  assert all(f['low'] <= f['tau'] <= f['high'] for f in fits + nulls)
  assert np.mean([f['tau'] for f in nulls]) < 0.005
  assert sum(f['low'] == 0 for f in nulls) >= 34


# ---------------------------------------------------------- the measurement

SLOW = pytest.mark.skipif(not os.environ.get('CLASSBIAS_SLOW'),
                          reason='paper-scale measurement: set CLASSBIAS_SLOW=1')


def _report_row(name: str, results: dict, tmp_path) -> list:
  """Writes results.npz, runs the report CLI's write, returns the table row."""
  workdir = tmp_path / name
  workdir.mkdir()
  save_results(str(workdir), {k: v for k, v in results.items()
                                  if k not in ('num_classes', 'planted_classes')})
  start = time.perf_counter()
  report.write(str(workdir))
  seconds = time.perf_counter() - start
  stats = analysis_json(workdir)
  entry = stats['values'][0]
  hurt, helped = set(entry['beyond_shift']['hurt']), set(entry['beyond_shift']['helped'])
  planted = {f'c{c}' for c in results['planted_classes']}
  others = [v for v in stats['values'] if v['index'] not in (0, stats['reference']['index'])]
  return [name, entry['num_hurt'], len(hurt), len(helped),
          sum(len(v['beyond_shift']['hurt']) + len(v['beyond_shift']['helped'])
              for v in others),
          100 * entry['beyond_shift']['shift']['effect'],
          100 * entry['class_dependence']['tau'], 100 * entry['class_dependence']['low'],
          100 * entry['class_dependence']['high'],
          len(hurt & planted) / max(len(hurt), 1) if planted else None,
          len(hurt & planted) / len(planted) if planted else None, seconds]


def analysis_json(workdir) -> dict:
  return json.loads((workdir / 'analysis.json').read_text())


@SLOW
def test_paper_scale_table(tmp_path):
  rng = np.random.default_rng(25)
  rows = []
  for name, planted in (('null', 0), ('planted', 30)):
    results = simulate(rng, classes=1000, seeds=20, images=50, values=7, planted=planted)
    rows.append(_report_row(name, results, tmp_path))
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  print('\n| sweep | absolute hurt at 0.08 | hurt beyond | helped beyond | flags at other '
        'values | shift (pts) | tau (pts) | tau 95% | precision | recall | report s |')
  for r in rows:
    print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:.2f} | '
          f'{r[7]:.2f}-{r[8]:.2f} | {r[9]} | {r[10]} | {r[11]:.1f} |')
  print(f'peak memory {peak:.2f} GiB')
  null, planted = rows
  assert null[2] + null[3] <= 5 and null[6] < 1
  assert planted[9] >= 0.9 and planted[10] >= 0.9
  assert max(r[11] for r in rows) < 60 and peak < 2


@SLOW
def test_paper_scale_replicates():
  """20 null and 20 planted sweeps at 1000 classes x 20 seeds x 50 images (value 0.08 vs
  0.1 alone, one BH family over its 1000 classes): flags, tau, precision and recall."""
  rng = np.random.default_rng(2025)
  rows = {}
  for name, planted in (('null', 0), ('planted', 30)):
    flagged, taus, precision, recall = [], [], [], []
    for _ in range(20):
      results = simulate(rng, classes=1000, seeds=20, images=50, planted=planted)
      out = beyond(results)
      hurt = np.flatnonzero(out['hurt'])
      flagged.append(int(out['hurt'].sum() + out['helped'].sum()))
      taus.append(100 * out['spread']['tau'])
      if planted:
        hits = np.isin(hurt, results['planted_classes']).sum()
        precision.append(hits / max(len(hurt), 1))
        recall.append(hits / planted)
    rows[name] = (flagged, taus, precision, recall)
    print(f'\n{name}: flagged per sweep mean {np.mean(flagged):.2f} max {max(flagged)}, '
          f'sweeps with any flag {np.mean(np.array(flagged) > 0):.2f}; tau mean '
          f'{np.mean(taus):.2f} max {max(taus):.2f} points' + (
              f'; precision mean {np.mean(precision):.3f} min {min(precision):.3f}, recall '
              f'mean {np.mean(recall):.3f} min {min(recall):.3f}' if planted else ''))
  assert max(rows['null'][0]) <= 5 and max(rows['null'][1]) < 1
  assert np.mean(rows['planted'][2]) >= 0.9 and np.mean(rows['planted'][3]) >= 0.9

