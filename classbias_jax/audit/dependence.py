"""Class dependence of a sweep, for analysis.json: beyond-the-shift flags, spread, flipped images.

Reads the comparisons `analysis` has tested (each class's effect, se, df and p against the
reference, as `effects.compare` returns them) and the correctness arrays; the statistics
are in `shift.py`. Notation: V sweep values, S seeds, C classes, N test images.

Every class at every non-reference value, beyond the shift against the reference, is one
Benjamini-Hochberg family (a second family, apart from the absolute tests'): a class is
hurt / helped beyond the shift when its q-value is below alpha.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from classbias_jax.audit import shift
from classbias_jax.audit.replication import paired_difference
from classbias_jax.audit.stats import bh_qvalues

FAMILY = 'every class at every non-reference sweep value, beyond the shift against the reference'
GALLERY_IMAGES = 8  # flipped images kept per class hurt beyond the shift


def _floats(x) -> list[float | None]:
  """A JSON-able list: NaN -> None, 6 significant decimals."""
  return [None if not np.isfinite(v) else round(float(v), 6) for v in np.ravel(x)]


def _one(x: float) -> float | None:
  return _floats([x])[0]


def _named(mask: np.ndarray, effect: np.ndarray, names: list[str]) -> list[str]:
  """Names of the classes in `mask`, largest |effect| first."""
  idx = np.flatnonzero(mask)
  return [names[i] for i in idx[np.argsort(-np.abs(effect[idx]), kind='stable')]]


def flipped_images(correct: np.ndarray, predictions: np.ndarray, valid: np.ndarray,
                   labels: np.ndarray, value: int, reference: int, class_index: int,
                   top: int = GALLERY_IMAGES) -> list[dict[str, int]]:
  """The class's test images most often turned right (at reference) -> wrong (at value).

  correct bool [V, S, N], predictions int [V, S, N], valid bool [V, S]. Over the seeds
  valid at both values: per image, `seeds` (how many seeds flipped it) and `to` (the class
  it was most often predicted as when flipped). Images flipped by no seed are left out.
  Returns up to `top` dicts {index (into the test split), seeds, to}, most flipped first.
  """
  seeds = valid[value] & valid[reference]
  idx = np.flatnonzero(labels == class_index)
  flips = correct[reference][seeds][:, idx] & ~correct[value][seeds][:, idx]  # [S', n]
  counts = flips.sum(0)
  order = [i for i in np.argsort(-counts, kind='stable')[:top] if counts[i] > 0]
  out = []
  for i in order:
    wrong = predictions[value][seeds][flips[:, i], idx[i]]
    out.append({'index': int(idx[i]), 'seeds': int(counts[i]),
                'to': int(np.bincount(wrong).argmax())})
  return out


def _tests(correct, valid, labels, comps, ref, num_classes) -> dict[int, dict]:
  """Per compared value v: the shift, the beyond-shift test and the spread (shift.py)."""
  out = {}
  for (v, key), comp in comps.items():
    if key != 'ref' or comp['self'] or not comp['seeds']:
      continue
    diff = paired_difference(correct, valid, v, ref)
    shared = shift.shared_shift(diff, labels, num_classes)
    out[v] = {'shift': shared, 'beyond': shift.beyond_shift(comp, shared),
              'spread': shift.between_class_spread(comp['effect'], comp['se'], comp['n'],
                                                       comp['seeds'])}
  return out


def _flag(tests: dict[int, dict], alpha: float) -> int:
  """Adds q, hurt and helped to each value's beyond test (one BH family); returns m."""
  keys = list(tests)
  p = np.concatenate([tests[v]['beyond']['p'] for v in keys]) if keys else np.zeros(0)
  q = bh_qvalues(p)
  for k, v in enumerate(keys):
    beyond = tests[v]['beyond']
    qv = q[k * beyond['p'].size:(k + 1) * beyond['p'].size]
    beyond.update(q=qv, hurt=(qv < alpha) & (beyond['effect'] < 0),
                  helped=(qv < alpha) & (beyond['effect'] > 0))
  return int(np.sum(~np.isnan(p)))


def _value_json(test, correct, predictions, valid, labels, v, ref, names) -> dict[str, Any]:
  b, shared, spread = test['beyond'], test['shift'], test['spread']
  flipped = [{'class': names[c], 'images': [
      {**im, 'to': names[im['to']]} for im in flipped_images(
          correct, predictions, valid, labels, v, ref, c)]}
      for c in np.flatnonzero(b['hurt'])[np.argsort(b['effect'][b['hurt']], kind='stable')]]
  return {
      'beyond_shift': {
          'shift': {k: _one(shared[k]) for k in ('effect', 'low', 'high')},
          'per_class': {k: _floats(b[k]) for k in ('effect', 'low', 'high', 'p', 'q')},
          'hurt': _named(b['hurt'], b['effect'], names),
          'helped': _named(b['helped'], b['effect'], names)},
      'class_dependence': {k: _one(spread[k]) for k in ('tau', 'low', 'high')},
      'flipped_images': flipped,
  }


def hurt_while_mean_improves(values_json: list[dict[str, Any]], ref: int) -> list[dict]:
  """Classes that lose beyond the shift on a move that raises mean accuracy.

  A value v compared with the reference r: when v's mean is higher, the classes hurt beyond
  the shift at v; when lower, the move from v to r raises the mean, and the classes helped
  beyond the shift at v are the ones that move hurts. Returns [{from, to (sweep values),
  mean_change, classes}] for the moves with such classes.
  """
  out, mean_ref = [], values_json[ref]['mean_accuracy']
  for entry in values_json:
    beyond = entry.get('beyond_shift')
    if beyond is None or entry['mean_accuracy'] is None or mean_ref is None:
      continue
    change = entry['mean_accuracy'] - mean_ref
    up = change > 0
    classes = beyond['hurt'] if up else beyond['helped']
    if classes and change != 0:
      low, high = (values_json[ref], entry) if up else (entry, values_json[ref])
      out.append({'from': low['value'], 'to': high['value'], 'mean_change': round(abs(change), 6),
                  'classes': classes})
  return out


def analyze(results: Mapping[str, Any], correct: np.ndarray, valid: np.ndarray,
            comps: dict[tuple, dict], ref: int, alpha: float) -> tuple[dict[int, dict], dict]:
  """Class dependence of every value against the reference.

  results: results.load's dict; correct bool [V, S, N]; valid bool [V, S]; comps: the
  analysis's tested comparisons {(value index, 'ref' | 'off'): compare's dict + p}.
  Returns ({value index: {'beyond_shift', 'class_dependence', 'flipped_images'}}, the
  family's description for analysis.json).
  """
  labels = np.asarray(results['test_labels'])
  names = [str(n) for n in results['class_names']]
  tests = _tests(correct, valid, labels, comps, ref, len(names))
  num_tests = _flag(tests, alpha)
  predictions = np.asarray(results['test_predictions'])
  per_value = {v: _value_json(t, correct, predictions, valid, labels, v, ref, names)
               for v, t in tests.items()}
  return per_value, {'family': FAMILY, 'num_tests': num_tests, 'method': {
      'shift': shift.SHIFT_METHOD, 'beyond': shift.BEYOND_METHOD,
      'spread': shift.SPREAD_METHOD}}
