"""The per-class tests of a report: each comparison of a sweep value against the reference
(and the off value), one Benjamini-Hochberg family over them all, the power of each test,
and where a hurt class's images went (its confusion flow).

Pure numpy/scipy; the test itself, its variance components, the FDR and the power
calculation are in `stats.py`; analysis.py assembles these into analysis.json.
Notation: V sweep values, S seeds, C classes, N test images. Effects are fractions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from classbias_jax.audit import stats
from classbias_jax.audit.replication import paired_difference
from classbias_jax.audit.stats import RUN_VARIANCE, bh_qvalues, crossed_effect_test
from classbias_jax.results import class_accuracy

ALPHA = 0.05  # q-value threshold for hurt / helped
CONFIDENCE = 0.95
TARGET_DROP = 0.05  # the drop whose seed count the report states
SEEDS_FOR_FULL_TEST = 4  # below this the report says what the run cannot conclude


def compare(diff: np.ndarray, labels: np.ndarray, num_classes: int,
            reference_accuracy: np.ndarray | None = None, pool=None) -> dict[str, Any]:
  """The per-class test of one comparison from paired differences diff [S', N].

  reference_accuracy [C]: the reference's accuracy on the same seeds, which bounds the
  interval (default: no bound beyond [-1, 1]); pool: pair_pool's run pool (None: the
  pair's own run-to-run variance). Returns [C] arrays effect, low, high, p, se, df, n, the
  variance components seed, image, res, homogeneity_p and run_values (stats.
  crossed_effect_test), plus seeds (S'). q-values and flags come from flag_family, over
  all the comparisons of a report.
  """
  seeds = diff.shape[0]
  if seeds == 0:
    nan = np.full(num_classes, np.nan)
    keys = ('effect', 'low', 'high', 'p', 'se', 'df', 'seed', 'image', 'res',
            'homogeneity_p', 'run_values')
    return {**{k: nan for k in keys}, 'seeds': 0,
            'n': np.bincount(labels, minlength=num_classes).astype(np.float64)}
  test = crossed_effect_test(diff, labels, num_classes, pool)
  # An effect against a class at accuracy a lies in [-a, 1 - a].
  ref = np.full(num_classes, np.nan) if reference_accuracy is None else reference_accuracy
  bounds = (np.where(np.isnan(ref), -1.0, -ref), np.where(np.isnan(ref), 1.0, 1 - ref))
  low, high = stats.effect_interval(test, bounds, CONFIDENCE)
  return {**test, 'low': low, 'high': high, 'seeds': seeds}


def pair_pool(per_seed: np.ndarray, valid: np.ndarray, labels: np.ndarray, value: int,
              reference: int, run_variance: str = RUN_VARIANCE[0]) -> dict[str, Any] | None:
  """The run pool of one comparison: per_seed [V, S, C] class accuracy, valid [V, S],
  labels [N] (the test images' classes).

  The values whose models are valid at every seed of the pair (the pair included), at
  those seeds; None for run_variance='pairwise', without a seed or with nothing to pool.
  """
  seeds = valid[value] & valid[reference]
  if run_variance == 'pairwise' or not seeds.any():
    return None
  values = np.flatnonzero(valid[:, seeds].all(1))
  if len(values) < 3 or value == reference:
    return None  # nothing to pool
  images = np.bincount(labels, minlength=per_seed.shape[-1])
  pair = (int(np.searchsorted(values, value)), int(np.searchsorted(values, reference)))
  return stats.run_pool(per_seed[values][:, seeds], images, pair)


def flag_family(comparisons: list[dict[str, Any]], alpha: float = ALPHA) -> list[dict[str, Any]]:
  """One Benjamini-Hochberg family over every class of every comparison given.

  Adds to each comparison q, hurt, helped (q < alpha) and level: alpha / m, the p-value a
  lone true effect needs in this family of m tests.
  """
  p = np.concatenate([c['p'] for c in comparisons]) if comparisons else np.zeros(0)
  q = bh_qvalues(p)
  level = alpha / max(int(np.sum(~np.isnan(p))), 1)
  out, start = [], 0
  for comp in comparisons:
    qc = q[start:start + comp['p'].size]
    start += comp['p'].size
    significant = qc < alpha
    out.append({**comp, 'q': qc, 'level': level, 'hurt': significant & (comp['effect'] < 0),
                'helped': significant & (comp['effect'] > 0)})
  return out


def with_power(comp: dict[str, Any], target: float = TARGET_DROP) -> dict[str, Any]:
  """Adds min_detectable (the smallest drop found with 80% power at the family's level) and
  seeds_needed (seeds per value for a `target` drop, same power and level): [C] each.

  The churn of a `target` drop floors var_e: a class right on every image in every run
  shows none, yet could not reveal a drop with no variance at all.
  """
  parts = {k: comp[k] for k in ('seed', 'image', 'res', 'run_values')}
  churn = target * (1 - target)  # var_e of a drop of `target` on images picked at random
  return {**comp, 'min_detectable': stats.detectable_effect(
              parts, comp['n'], comp['seeds'], comp['level'], churn=churn),
          'seeds_needed': stats.seeds_needed(parts, comp['n'], target, comp['level'],
                                             churn=churn)}


def confusion_flow(predictions: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                   value: int, reference: int, class_index: int, num_classes: int,
                   top: int = 5) -> dict[str, Any]:
  """Where class `class_index` loses its images between `reference` and `value`.

  Compares the class's confusion-matrix rows (as fractions of its images, mean over the
  seeds valid for both values). Returns lost (net drop of the diagonal) and `to`: the
  `top` classes whose share of the row grew most, as (class index, fraction of images).
  """
  seeds = valid[value] & valid[reference]
  idx = np.flatnonzero(labels == class_index)
  rows = [np.bincount(predictions[k, seeds][:, idx].ravel(), minlength=num_classes)
          for k in (value, reference)]
  delta = (rows[0] - rows[1]) / max(int(seeds.sum()) * idx.size, 1)
  delta[class_index] = -delta[class_index]  # the diagonal's drop, stored as "lost"
  receivers = [int(j) for j in np.argsort(-delta, kind='stable')
               if j != class_index and delta[j] > 0][:top]
  return {'lost': float(delta[class_index]), 'to': [(j, float(delta[j])) for j in receivers]}


def comparisons(correct, valid, labels, num_classes: int, ref: int, off: int | None,
                run_variance: str = RUN_VARIANCE[0]) -> dict[tuple, dict]:
  """Every comparison of a report, {(value index, 'ref' or 'off'): compare's dict}.

  correct bool [V, S, N]; valid bool [V, S]; ref, off: value indices (off may be None).
  """
  per_seed = class_accuracy(correct, labels, num_classes)  # [V, S, C]
  out = {}
  for v in range(len(correct)):
    for key, r in (('ref', ref), ('off', off)):
      if r is not None:
        seeds = valid[v] & valid[r]
        ref_acc = per_seed[r, seeds].mean(0) if seeds.any() else None
        out[v, key] = compare(paired_difference(correct, valid, v, r), labels, num_classes,
                              ref_acc, pair_pool(per_seed, valid, labels, v, r, run_variance))
        out[v, key]['self'] = v == r
  return out


def flag_all(comparisons: dict[tuple, dict], alpha: float) -> tuple[dict, dict]:
  """flag_family over the comparisons of distinct values. A value against itself gets no q;
  the reference against the off value mirrors the off value against the reference."""
  mirror = [(v, 'off') for (v, key), c in comparisons.items()
            if key == 'ref' and c['self'] and (v, 'off') in comparisons]
  keys = [k for k, c in comparisons.items() if not c['self'] and k not in mirror]
  flagged = dict(zip(keys, map(with_power, flag_family([comparisons[k] for k in keys], alpha))))
  out = {}
  for k, comp in comparisons.items():
    none, nan = np.zeros(comp['p'].shape, bool), np.full(comp['p'].shape, np.nan)
    twin = flagged.get((off_reference(comparisons), 'ref')) if k in mirror else None
    out[k] = flagged.get(k) or ({**comp, **{x: twin[x] for x in ('q', 'min_detectable',
                                                                  'seeds_needed')},
                                 'hurt': twin['helped'], 'helped': twin['hurt']} if twin else
                                {**comp, 'q': nan, 'hurt': none, 'helped': none,
                                 'min_detectable': nan, 'seeds_needed': nan})
  level = next(iter(flagged.values()))['level'] if flagged else alpha
  return out, {'num_tests': int(sum(np.sum(~np.isnan(comparisons[k]['p'])) for k in keys)),
               'level': level}


def off_reference(comparisons: dict[tuple, dict]) -> int | None:
  """The off value's index: the value whose comparison against the off value is to itself."""
  return next((k[0] for k, c in comparisons.items() if k[1] == 'off' and c['self']), None)


def inference(num_seeds: int) -> str:
  """What a comparison on num_seeds seed pairs can conclude: conditional, limited or tested."""
  if num_seeds < 2:
    return 'conditional'
  return 'limited' if num_seeds < SEEDS_FOR_FULL_TEST else 'tested'
