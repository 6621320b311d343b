"""Per-class statistics on a sweep's results: effects, intervals, tests, FDR, replication.

Pure numpy/scipy on the dict that `results.load` returns; nothing here imports JAX.
Notation: V sweep values, S seeds, C classes, N test images, n images of one class,
B bootstrap draws. Accuracies and effects are fractions (0.05 = 5 percentage points).

The effect of sweep value v on class c, against a reference value r, is

    effect_c = mean over seeds s and images i of class c of  D[s, i] = y[v, s, i] - y[r, s, i]

with y = 1 when the model classifies the image correctly. Seeds are common random numbers
(same init, data order and augmentation draws for every sweep value), so D pairs the two
models trained with the same seed, on the same test image.

Which test, and why
-------------------
A class effect must stand out from two kinds of noise: another training run (seed) and
another sample of the class's images. The two obvious tests each ignore one of them:
- a paired t-test across seeds on per-class accuracy treats the test images as fixed
  (their noise is shared by all seeds and cancels from its variance), and has S - 1
  degrees of freedom: one with two seeds, so it can flag almost nothing;
- a per-image test pooled over seeds (McNemar for one seed, a paired test over the
  class's images) treats the S trained models as fixed: a run that happens to move the
  whole class (say, the boundary between cat and dog) counts as signal.
This is the "language-as-fixed-effect fallacy" (Clark 1973) with seeds and images in the
roles of subjects and items, and its standard remedy is used here: a crossed
random-effects model with one observation per (seed, image) cell,

    D[s, i] = effect + a_s + b_i + e_si       (seed, image and seed x image terms),
    Var(mean D) = var_a / S + var_b / n + var_e / (S n),

estimated from the two-way ANOVA mean squares (negative components set to zero), and a
t reference distribution with Satterthwaite's degrees of freedom. When runs do not shift
the class as a whole (var_a ~ 0, the common case: most seed-to-seed change is per-image
churn) the test has the power of the S x n paired outcomes; when they do, its degrees of
freedom fall towards S - 1 and it becomes as cautious as the seed-level test must be.
A class's seed component is floored at its mean over all classes, which has C (S - 1)
degrees of freedom: with 2-3 seeds a class's own estimate is often negative by chance,
and dropping it would make the test liberal exactly when seeds matter. In simulations
(logistic per-image difficulty, per-run class-wide shifts, 2-8 seeds, 50-1000 images per
class) the rate of p < 0.05 under no effect was 1-4% overall; classes whose runs shift
them strongly while most classes' runs do not reached 6-7% at 4-8 seeds and 10-12% at 2.
In the same simulations the image-only test flagged 40-85% of null classes once runs
shifted classes, and with 2 seeds and 1000 images the seed-only test found a 0.5-logit
effect in 36% of classes where this one found it in 69%.
With one seed var_a cannot be estimated and the test is conditional on that model (a
paired t-test over images, close to McNemar's). Permutation tests were ruled out: signs
flipped over 2-8 seeds give at most 2^S distinct values (p >= 1/2 at S = 2), too coarse
for FDR control over 1000 classes, and flips over images alone ignore the seed noise.

Benjamini-Hochberg q-values are taken across classes, separately for each sweep value
(one family of C tests per comparison). Intervals on per-class accuracies come from a
two-way bootstrap (seeds resampled, images resampled within each class; slightly
conservative, Owen 2007); intervals on effects are the test's t intervals, so an
interval excludes zero exactly when p < 0.05.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
from scipy import stats

from classbias_jax.errors import ConfigError

ALPHA = 0.05  # q-value threshold for hurt / helped
CONFIDENCE = 0.95

# The value that turns a knob off, keyed by the last component of sweep_name.
OFF_VALUES = {'weight_decay': 0.0, 'crop_scale_min': 1.0, 'color_strength': 0.0,
              'erase_prob': 0.0, 'label_smoothing': 0.0, 'dropout_rate': 0.0}
OFF_AT_ZERO_SUFFIXES = ('_prob', '_strength')

TEST_NAME = ('crossed random-effects t-test over seeds x images (Satterthwaite df), '
             'paired by seed and image')


# ---------------------------------------------------------------------------- tests

def bh_qvalues(p: np.ndarray) -> np.ndarray:
  """Benjamini-Hochberg q-values: p [C] -> q [C]; NaN p-values stay NaN and are not counted."""
  p = np.asarray(p, np.float64)
  q = np.full(p.shape, np.nan)
  ok = ~np.isnan(p)
  m = int(ok.sum())
  if m == 0:
    return q
  order = np.argsort(p[ok])
  scaled = p[ok][order] * m / np.arange(1, m + 1)
  # Step-up: each q is the smallest scaled p at its rank or above.
  scaled = np.minimum.accumulate(scaled[::-1])[::-1]
  out = np.empty(m)
  out[order] = np.minimum(scaled, 1.0)
  q[ok] = out
  return q


def _per_class_sums(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Sums of values [S, N] over the images of each class -> [S, C]."""
  s = values.shape[0]
  index = (np.arange(s)[:, None] * num_classes + labels[None, :]).ravel()
  sums = np.bincount(index, weights=values.ravel(), minlength=s * num_classes)
  return sums.reshape(s, num_classes)


def _mean_squares(diff: np.ndarray, labels: np.ndarray, num_classes: int):
  """Two-way ANOVA of diff [S, N] within each class: (grand mean, MS, df) per term, [C] each."""
  s = diff.shape[0]
  n = np.bincount(labels, minlength=num_classes).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    seed_mean = _per_class_sums(diff, labels, num_classes) / n  # [S, C]
    grand = seed_mean.mean(0)  # [C]
    centred = diff - grand[labels]
    ss_seed = n * ((seed_mean - grand) ** 2).sum(0)
    ss_image = s * np.bincount(labels, weights=centred.mean(0) ** 2, minlength=num_classes)
    ss_total = np.bincount(labels, weights=(centred ** 2).sum(0), minlength=num_classes)
    ss_res = np.maximum(ss_total - ss_seed - ss_image, 0.0)
  df = {'seed': np.full(num_classes, s - 1.0), 'image': n - 1, 'res': (s - 1.0) * (n - 1)}
  ss = {'seed': ss_seed, 'image': ss_image, 'res': ss_res}
  # A term without degrees of freedom is confounded with the others: give it no weight.
  ms = {k: np.where(df[k] > 0, ss[k] / np.maximum(df[k], 1), 0.0) for k in ss}
  return grand, ms, df, n


def _variance_of_mean(ms, df, n, s: int):
  """S n Var(mean diff) per class and its Satterthwaite degrees of freedom, both [C].

  A variance component enters only when its estimate is positive. A class's seed
  component is floored at its mean over classes (C (S - 1) degrees of freedom): with 2-3
  seeds a class's own estimate is often negative by chance, and dropping it then would
  make the test liberal exactly when runs matter.
  """
  with np.errstate(invalid='ignore', divide='ignore'):
    seed_var = (ms['seed'] - ms['res']) / n  # unbiased, but S - 1 degrees of freedom only
  usable = (df['seed'] > 0) & (n > 0)
  pooled = max(float(np.mean(seed_var[usable])), 0.0) if usable.any() else 0.0
  # Mean squares equal up to rounding (common with a handful of flipped images) are ties.
  above_res = lambda m: m > ms['res'] * (1 + 1e-9) + 1e-15  # noqa: E731
  use_seed = (seed_var >= pooled) & above_res(ms['seed'])
  use_pooled = ~use_seed & (pooled > 0)
  use_image = above_res(ms['image'])
  coef = {'seed': use_seed * 1.0, 'image': use_image * 1.0, 'res': 1.0 - use_seed - use_image,
          'pooled': use_pooled * 1.0}
  terms = {k: coef[k] * ms[k] for k in ms}
  terms['pooled'] = use_pooled * pooled * n
  df = dict(df, pooled=np.full(n.shape, (s - 1.0) * max(int(usable.sum()), 1)))
  var_sum = sum(terms.values())
  with np.errstate(invalid='ignore', divide='ignore'):
    denom = sum(np.where(coef[k] != 0, terms[k] ** 2 / np.maximum(df[k], 1), 0.0)
                for k in terms)
    return var_sum, var_sum ** 2 / denom


def crossed_effect_test(diff: np.ndarray, labels: np.ndarray,
                        num_classes: int) -> dict[str, np.ndarray]:
  """Tests mean(diff) = 0 per class, seeds and images crossed random (module docstring).

  diff float [S, N]: paired differences of correctness (seed s, test image i);
  labels int [N]. Returns float [C] arrays: effect, se, df, p, n (images per class).
  A class without images gets NaN.
  """
  s = diff.shape[0]
  effect, ms, df, n = _mean_squares(np.asarray(diff, np.float64), labels, num_classes)
  var_sum, dof = _variance_of_mean(ms, df, n, s)
  with np.errstate(invalid='ignore', divide='ignore'):
    se = np.sqrt(np.maximum(var_sum, 0.0) / (s * n))
    p = 2 * stats.t.sf(np.abs(effect) / se, dof)
  # Zero variance: every cell has the same difference. Exact sign-flip p over the images.
  flat = se == 0
  p = np.where(flat, np.where(effect == 0, 1.0, np.minimum(1.0, 2.0 ** (1 - n))), p)
  dof = np.where(flat, n - 1, dof)
  missing = n == 0
  effect, se, dof, p = (np.where(missing, np.nan, x) for x in (effect, se, dof, p))
  return {'effect': effect, 'se': se, 'df': dof, 'p': p, 'n': n}


def effect_interval(test: Mapping[str, np.ndarray],
                    confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
  """The t interval of crossed_effect_test's effects: (low [C], high [C])."""
  with np.errstate(invalid='ignore'):
    half = stats.t.ppf(0.5 + confidence / 2, np.maximum(test['df'], 1e-9)) * test['se']
  half = np.where(test['se'] == 0, 0.0, half)
  return test['effect'] - half, test['effect'] + half


# ---------------------------------------------------------------------- bootstrap

def _resample_counts(size: int, draws: int, rng: np.random.Generator) -> np.ndarray:
  """How often each of `size` items is drawn in each of `draws` resamples: float32 [B, size]."""
  picks = rng.integers(0, size, (draws, size)) + size * np.arange(draws)[:, None]
  return np.bincount(picks.ravel(), minlength=draws * size).reshape(draws, size).astype(
      np.float32)


def _seed_counts(valid: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
  """Resampling counts of the valid seeds of each sweep value: valid [V, S] -> [V, B, S]."""
  out = np.zeros((valid.shape[0], draws, valid.shape[1]), np.float32)
  for v, row in enumerate(valid):
    if row.any():
      out[v][:, row] = _resample_counts(int(row.sum()), draws, rng)
  return out


def bootstrap_accuracy(correct: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                       num_classes: int, num_bootstrap: int,
                       rng: np.random.Generator) -> np.ndarray:
  """Per-class accuracy under a two-way bootstrap: float32 [V, C, B].

  correct bool [V, S, N]; valid bool [V, S] (models kept). Each draw resamples the valid
  seeds of each value and, independently, the images within each class (the same image
  draws for every value).
  """
  seed_counts = _seed_counts(valid, num_bootstrap, rng)  # [V, B, S]
  kept = valid.sum(1).astype(np.float32)  # [V]
  out = np.full((correct.shape[0], num_classes, num_bootstrap), np.nan, np.float32)
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if not idx.size:
      continue
    image_counts = _resample_counts(idx.size, num_bootstrap, rng)  # [B, n]
    per_seed = correct[:, :, idx].astype(np.float32) @ image_counts.T  # [V, S, B]
    with np.errstate(invalid='ignore', divide='ignore'):
      out[:, c] = np.einsum('vsb,vbs->vb', per_seed, seed_counts) / (kept[:, None] * idx.size)
  return out


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE):
  """(low, high) percentiles over the last axis of bootstrap draws (NaN rows stay NaN)."""
  tail = 100 * (1 - confidence) / 2
  return np.percentile(draws, [tail, 100 - tail], axis=-1)


# ------------------------------------------------------------------ building blocks

def off_index(sweep_name: str, sweep_values: np.ndarray) -> int | None:
  """Index of the knob's "off" value among sweep_values (weight_decay 0, crop_scale_min 1, ...).

  The knob is the last component of sweep_name; None when it has no known off value or
  the sweep does not include it.
  """
  knob = str(sweep_name).split('.')[-1]
  off = OFF_VALUES.get(knob, 0.0 if knob.endswith(OFF_AT_ZERO_SUFFIXES) else None)
  if off is None:
    return None
  hits = np.flatnonzero(np.isclose(np.asarray(sweep_values, np.float64), off, rtol=0, atol=1e-12))
  return int(hits[0]) if hits.size else None


def reference_index(sweep_values: np.ndarray, mean_accuracy: np.ndarray,
                    reference: float | None) -> int:
  """The given reference value's index, or the value with the best mean accuracy [V]."""
  values = np.asarray(sweep_values, np.float64)
  if reference is None:
    if np.all(np.isnan(mean_accuracy)):
      raise ConfigError('every model diverged: nothing to analyse')
    return int(np.nanargmax(mean_accuracy))
  hits = np.flatnonzero(np.isclose(values, reference, rtol=1e-9, atol=1e-12))
  if not hits.size:
    listed = ', '.join(f'{v:g}' for v in values)
    raise ConfigError(f'reference {reference:g} is not a sweep value (values: {listed})')
  if np.isnan(mean_accuracy[hits[0]]):
    raise ConfigError(f'reference {reference:g} has no usable model (all diverged)')
  return int(hits[0])


def valid_models(results: Mapping[str, Any]) -> tuple[np.ndarray, list[str]]:
  """Models to keep: bool [V, S] (False where `diverged`), and one warning per dropped model."""
  shape = np.shape(results['mean_accuracy'])
  diverged = np.asarray(results.get('diverged', np.zeros(shape, bool)), bool)
  values, seeds = results['sweep_values'], results['seeds']
  notes = [f'left out the diverged model at {results["sweep_name"]}={values[v]:g}, '
           f'seed {seeds[s]}' for v, s in zip(*np.nonzero(diverged))]
  for note in notes:
    logging.warning(note)
  return ~diverged, notes


def class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Accuracy of each class for each model: correct bool [V, S, N] -> float [V, S, C]."""
  lead = correct.shape[:-1]
  sums = _per_class_sums(correct.reshape(-1, labels.size).astype(np.float64), labels,
                         num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    return (sums / np.bincount(labels, minlength=num_classes)).reshape(lead + (num_classes,))


def masked_seed_mean(per_seed: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Mean over the valid seeds: per_seed [V, S, ...], valid [V, S] -> [V, ...] (NaN if none)."""
  mask = valid.reshape(valid.shape + (1,) * (per_seed.ndim - 2))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(mask, per_seed, 0).sum(1) / mask.sum(1)


def summary_curves(accuracy: np.ndarray, images_per_class: np.ndarray) -> dict[str, np.ndarray]:
  """Per sweep value, from per-class accuracy [V, C] (mean over seeds):

  mean (over test images, i.e. weighted by images per class), class_mean (unweighted),
  worst_class (min over classes), worst_class_index, p10_class (10th percentile over classes).
  """
  weights = np.where(np.isnan(accuracy), 0.0, images_per_class)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean = (np.nan_to_num(accuracy) * weights).sum(1) / weights.sum(1)
  usable = ~np.all(np.isnan(accuracy), axis=1)
  filled = np.where(usable[:, None], accuracy, 0.0)
  return {
      'mean': mean,
      'class_mean': np.where(usable, np.nanmean(filled, axis=1), np.nan),
      'worst_class': np.where(usable, np.nanmin(filled, axis=1), np.nan),
      'worst_class_index': np.nanargmin(np.where(np.isnan(filled), np.inf, filled), axis=1),
      'p10_class': np.where(usable, np.nanpercentile(filled, 10, axis=1), np.nan),
  }


def paired_difference(correct: np.ndarray, valid: np.ndarray, value: int,
                      reference: int) -> np.ndarray:
  """Correctness at `value` minus at `reference`, on the seeds valid for both: int8 [S', N]."""
  seeds = valid[value] & valid[reference]
  return correct[value, seeds].astype(np.int8) - correct[reference, seeds].astype(np.int8)


def compare(diff: np.ndarray, labels: np.ndarray, num_classes: int,
            alpha: float = ALPHA) -> dict[str, np.ndarray]:
  """Per-class effect test, interval and BH q-values from paired differences diff [S', N].

  Returns [C] arrays effect, low, high, p, q, and bool masks hurt, helped (q < alpha).
  """
  if diff.shape[0] == 0:
    nan = np.full(num_classes, np.nan)
    none = np.zeros(num_classes, bool)
    return {'effect': nan, 'low': nan, 'high': nan, 'p': nan, 'q': nan,
            'hurt': none, 'helped': none}
  test = crossed_effect_test(diff, labels, num_classes)
  low, high = effect_interval(test)
  q = bh_qvalues(test['p'])
  significant = q < alpha
  return {'effect': test['effect'], 'low': low, 'high': high, 'p': test['p'], 'q': q,
          'hurt': significant & (test['effect'] < 0),
          'helped': significant & (test['effect'] > 0)}


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


# ---------------------------------------------------------------------- replication

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


def _replicate_once(diff, labels, num_classes, flag_half, alpha):
  """Flags classes on images `flag_half`, re-measures them on the rest: dict of scalars."""
  first = crossed_effect_test(diff[:, flag_half], labels[flag_half], num_classes)
  second = crossed_effect_test(diff[:, ~flag_half], labels[~flag_half], num_classes)
  flagged = bh_qvalues(first['p']) < alpha
  sign = np.sign(first['effect'][flagged])
  effect_b = second['effect'][flagged]
  worst = int(np.nanargmin(first['effect'])) if np.any(~np.isnan(first['effect'])) else 0
  return {
      'flagged': int(flagged.sum()),
      'replicated': int(np.sum((np.sign(effect_b) == sign) & (second['p'][flagged] < alpha))),
      'same_sign': int(np.sum(np.sign(effect_b) == sign)),
      'effect_a': float(np.sum(np.abs(first['effect'][flagged]))),
      'effect_b': float(np.nansum(effect_b * sign)),
      'worst_a': float(first['effect'][worst]),
      'worst_b': float(second['effect'][worst]),
  }


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
  (q < alpha) on one half are re-measured on the other, both ways round. A flagged class
  replicates when its effect on the other half has the same sign and p < alpha.
  shrinkage = sum of the flagged effects measured on the other half / on the flagging half
  (1: no winner's curse; 0: the effects were noise). worst_class_effect_a/_b: the most
  negative class effect on the flagging half, and that class's effect on the other half.
  Returns ({value index: summary}, pooled summary over values); rates are None when
  nothing was flagged.
  """
  rng = rng or np.random.default_rng(0)
  halves = [stratified_half(labels, rng) for _ in range(num_splits)]
  per_value, pooled = {}, []
  for v in range(correct.shape[0]):
    diff = paired_difference(correct, valid, v, reference)
    if v == reference or diff.shape[0] == 0:
      continue
    runs = [_replicate_once(diff, labels, num_classes, h, alpha) for half in halves
            for h in (half, ~half)]
    per_value[v] = _replication_summary(runs)
    pooled += runs
  return per_value, (_replication_summary(pooled) if pooled else None)


# ------------------------------------------------------------------------- analyze

def _floats(x) -> list[float | None]:
  """A JSON-able list: NaN -> None, 6 significant decimals."""
  return [None if not np.isfinite(v) else round(float(v), 6) for v in np.ravel(x)]


def _named(mask: np.ndarray, effect: np.ndarray, names: list[str]) -> list[str]:
  """Names of the classes in `mask`, largest |effect| first."""
  idx = np.flatnonzero(mask)
  return [names[i] for i in idx[np.argsort(-np.abs(effect[idx]), kind='stable')]]


def _comparison_json(comp: Mapping[str, np.ndarray], names: list[str]) -> dict[str, Any]:
  return {
      'hurt': _named(comp['hurt'], comp['effect'], names),
      'helped': _named(comp['helped'], comp['effect'], names),
      'num_hurt': int(comp['hurt'].sum()), 'num_helped': int(comp['helped'].sum()),
      'per_class': {k: _floats(comp[k]) for k in ('effect', 'low', 'high', 'p', 'q')},
  }


def _flows_json(results, valid, v, ref, comp, names, top) -> list[dict[str, Any]]:
  """Confusion flow of every hurt class, most hurt first."""
  labels, predictions = results['test_labels'], results['test_predictions']
  hurt = np.flatnonzero(comp['hurt'])
  out = []
  for c in hurt[np.argsort(comp['effect'][hurt], kind='stable')]:
    flow = confusion_flow(predictions, labels, valid, v, ref, int(c), len(names), top)
    out.append({'class': names[c], 'lost': round(flow['lost'], 6),
                'to': [{'class': names[j], 'fraction': round(f, 6)} for j, f in flow['to']]})
  return out


def _focus_index(values_json: list[dict[str, Any]], reference: int) -> int | None:
  """The non-reference value with the most hurt classes (then most helped): the one to plot."""
  others = [v for v in range(len(values_json)) if v != reference]
  if not others:
    return None
  return max(others, key=lambda v: (values_json[v]['num_hurt'], values_json[v]['num_helped'],
                                    abs(v - reference)))


def _mean_draws(boot: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Bootstrap draws of the mean accuracy over test images: boot [V, C, B] -> [V, B]."""
  weights = images[None, :, None] * ~np.isnan(boot)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.nansum(boot * weights, axis=1) / weights.sum(1)


def _accuracy_json(accuracy, curves, boot, images, names) -> list[dict[str, Any]]:
  """Per sweep value: summary accuracies and per-class accuracy with bootstrap intervals."""
  acc_low, acc_high = percentile_interval(boot)
  mean_low, mean_high = percentile_interval(_mean_draws(boot, images))
  one = lambda x: _floats(x)[0]  # noqa: E731
  return [{
      'mean_accuracy': one(curves['mean'][v]),
      'mean_accuracy_low': one(mean_low[v]), 'mean_accuracy_high': one(mean_high[v]),
      'class_mean_accuracy': one(curves['class_mean'][v]),
      'worst_class_accuracy': one(curves['worst_class'][v]),
      'worst_class': names[curves['worst_class_index'][v]],
      'p10_class_accuracy': one(curves['p10_class'][v]),
      'accuracy': _floats(accuracy[v]), 'accuracy_low': _floats(acc_low[v]),
      'accuracy_high': _floats(acc_high[v]),
  } for v in range(len(accuracy))]


def _effects_json(results, correct, valid, v, ref, off, alpha, top_flow) -> dict[str, Any]:
  """Sweep value v against the reference (and the off value): tests, hurt/helped, flows."""
  labels, names = results['test_labels'], [str(n) for n in results['class_names']]
  comp = compare(paired_difference(correct, valid, v, ref), labels, len(names), alpha)
  entry = {**_comparison_json(comp, names),
           'confusion_flow': _flows_json(results, valid, v, ref, comp, names, top_flow)}
  if off is not None:
    entry['against_off'] = _comparison_json(
        compare(paired_difference(correct, valid, v, off), labels, len(names), alpha), names)
  return entry


def _replication_json(per_value, pooled, values, num_splits) -> dict[str, Any]:
  rounded = lambda r: {k: (None if x is None else round(x, 6)) for k, x in r.items()}  # noqa
  return {'num_splits': num_splits,
          'values': [{'value': float(values[v]), 'index': v, **rounded(r)}
                     for v, r in per_value.items()],
          'pooled': pooled and rounded(pooled)}


def analyze(results: Mapping[str, Any], reference: float | None = None, alpha: float = ALPHA,
            num_bootstrap: int = 1000, num_splits: int = 5, top_flow: int = 5,
            seed: int = 0) -> dict[str, Any]:
  """All statistics of one sweep as a JSON-able dict (see the module docstring for methods).

  results: the dict from results.load. reference: a sweep value to compare against
  (default: the value with the best mean accuracy). Raises ConfigError on a reference that
  is not a sweep value. Accuracies and effects are fractions; per-class lists follow
  class_names. `values[k]` holds, for sweep value k: summary numbers, per-class accuracy
  with bootstrap intervals, the effect against the reference (effect, low, high, p, q per
  class; `hurt` and `helped`: class names at q < alpha, largest effect first), the
  confusion flow of each hurt class and, when the knob has an "off" value other than the
  reference, the same comparison against it under `against_off`.
  """
  rng = np.random.default_rng(seed)
  labels = np.asarray(results['test_labels'])
  names = [str(n) for n in results['class_names']]
  values = np.asarray(results['sweep_values'], np.float64)
  valid, notes = valid_models(results)
  correct = np.asarray(results['test_predictions']) == labels  # [V, S, N]
  images = np.bincount(labels, minlength=len(names)).astype(np.float64)
  accuracy = masked_seed_mean(class_accuracy(correct, labels, len(names)), valid)  # [V, C]
  curves = summary_curves(accuracy, images)
  ref = reference_index(values, curves['mean'], reference)
  off = off_index(results['sweep_name'], values)
  off = None if off == ref or off is None or not valid[off].any() else off
  notes += [f'no usable model at {results["sweep_name"]}={values[v]:g}'
            for v in range(len(values)) if not valid[v].any()]
  boot = bootstrap_accuracy(correct, labels, valid, len(names), num_bootstrap, rng)
  values_json = [
      {'value': float(values[v]), 'index': v, 'num_models': int(valid[v].sum()), **acc,
       **_effects_json(results, correct, valid, v, ref, off, alpha, top_flow)}
      for v, acc in enumerate(_accuracy_json(accuracy, curves, boot, images, names))]
  replication = split_half_replication(correct, labels, valid, ref, len(names), alpha,
                                       num_splits, rng)
  return {
      'sweep_name': str(results['sweep_name']), 'sweep_values': _floats(values),
      'seeds': [int(s) for s in results['seeds']], 'class_names': names,
      'num_classes': len(names), 'num_test_images': int(labels.size),
      'images_per_class': [int(n) for n in images],
      'alpha': alpha, 'confidence': CONFIDENCE, 'num_bootstrap': num_bootstrap,
      'test': TEST_NAME, 'warnings': notes,
      'excluded_models': [{'value': float(values[v]), 'seed': int(results['seeds'][s])}
                          for v, s in zip(*np.nonzero(~valid))],
      'reference': {'value': float(values[ref]), 'index': ref,
                    'chosen_by': 'best mean accuracy' if reference is None else 'given'},
      'off_reference': None if off is None else {'value': float(values[off]), 'index': off},
      'focus_index': _focus_index(values_json, ref),
      'values': values_json,
      'replication': _replication_json(*replication, values, num_splits),
  }
