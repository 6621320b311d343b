"""Split-half replication: classes flagged on half of the test images, re-measured on the rest.

The halves share their seeds, so this checks the image noise only; see analysis.py.
"""
from __future__ import annotations

import numpy as np

from classbias_jax.audit.stats import bh_qvalues, crossed_effect_test

ALPHA = 0.05


def paired_difference(correct: np.ndarray, valid: np.ndarray, value: int,
                      reference: int) -> np.ndarray:
  """Correctness at `value` minus at `reference`, on the seeds valid for both: int8 [S', N]."""
  seeds = valid[value] & valid[reference]
  return correct[value, seeds].astype(np.int8) - correct[reference, seeds].astype(np.int8)


def stratified_half(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A random half of the test images, floor(n/2) of each class: bool [N]."""
  order = np.lexsort((rng.random(labels.size), labels))
  sorted_labels = labels[order]
  first = np.searchsorted(sorted_labels, sorted_labels, side='left')
  rank = np.arange(labels.size) - first  # position within its class
  counts = np.bincount(labels)
  half = np.zeros(labels.size, bool)
  half[order] = rank < counts[sorted_labels] // 2
  return half


def _replicate_once(diffs, labels, num_classes, flag_half, alpha) -> dict[int, dict]:
  """Flags classes on images `flag_half` (one BH family over the values of diffs
  {value: diff}), re-measures them on the rest: {value: dict of scalars}."""
  first = {v: crossed_effect_test(d[:, flag_half], labels[flag_half], num_classes)
           for v, d in diffs.items()}
  if not first:
    return {}
  q = bh_qvalues(np.concatenate([t['p'] for t in first.values()]))
  out = {}
  for k, (v, a) in enumerate(first.items()):
    b = crossed_effect_test(diffs[v][:, ~flag_half], labels[~flag_half], num_classes)
    flagged = q[k * num_classes:(k + 1) * num_classes] < alpha
    sign = np.sign(a['effect'][flagged])
    effect_b = b['effect'][flagged]
    worst = int(np.nanargmin(a['effect'])) if np.any(~np.isnan(a['effect'])) else 0
    out[v] = {
        'flagged': int(flagged.sum()),
        'replicated': int(np.sum((np.sign(effect_b) == sign) & (b['p'][flagged] < alpha))),
        'same_sign': int(np.sum(np.sign(effect_b) == sign)),
        'effect_a': float(np.sum(np.abs(a['effect'][flagged]))),
        'effect_b': float(np.nansum(effect_b * sign)),
        'worst_a': float(a['effect'][worst]), 'worst_b': float(b['effect'][worst]),
    }
  return out


def _replication_summary(runs: list[dict[str, float]]) -> dict[str, float | None]:
  """Pools _replicate_once results: rates over all flagged classes, mean worst-class drops."""
  total = {k: sum(r[k] for r in runs) for k in runs[0]}
  flagged = total['flagged']
  return {
      'flagged_per_half': flagged / len(runs),
      'replication_rate': total['replicated'] / flagged if flagged else None,
      'same_sign_rate': total['same_sign'] / flagged if flagged else None,
      'shrinkage': total['effect_b'] / total['effect_a'] if total['effect_a'] else None,
      'worst_class_effect_a': total['worst_a'] / len(runs),
      'worst_class_effect_b': total['worst_b'] / len(runs),
  }


def split_half_replication(correct: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                           reference: int, num_classes: int, alpha: float = ALPHA,
                           num_splits: int = 5, rng: np.random.Generator | None = None):
  """Split-half replication of the class effects of every value against `reference`.

  Each split halves the test images at random within each class; classes flagged
  (q < alpha, one BH family over all values) on one half are re-measured on the other, both ways round. A flagged class
  replicates when its effect on the other half has the same sign and p < alpha.
  shrinkage = sum of the flagged effects measured on the other half / on the flagging half
  (1: no winner's curse; 0: the effects were noise). worst_class_effect_a/_b: the most
  negative class effect on the flagging half, and that class's effect on the other half.
  Returns ({value index: summary}, pooled summary over values); rates are None when
  nothing was flagged.
  """
  rng = rng or np.random.default_rng(0)
  halves = [stratified_half(labels, rng) for _ in range(num_splits)]
  diffs = {v: paired_difference(correct, valid, v, reference) for v in range(len(correct))}
  diffs = {v: d for v, d in diffs.items() if v != reference and d.shape[0]}
  runs = [_replicate_once(diffs, labels, num_classes, h, alpha) for half in halves
          for h in (half, ~half)]
  per_value = {v: _replication_summary([r[v] for r in runs]) for v in diffs}
  pooled = [r[v] for r in runs for v in diffs]
  return per_value, (_replication_summary(pooled) if pooled else None)
