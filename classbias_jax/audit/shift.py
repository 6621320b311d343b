"""Class dependence: the shift shared by all classes, each class beyond it, and the spread.

Pure numpy/scipy, on the per-class test of `stats.crossed_effect_test` (as `effects.compare`
returns it: effect, se, df per class) and the paired differences it was computed from.
Notation: S seeds, N test images, C classes. Effects are fractions
(0.05 = 5 percentage points). docs/statistics.md says how each estimate was checked.

A knob that lowers every class by the same amount is not class dependent. For one
comparison (sweep value v against the reference):

- the **shared shift** is the median over classes of the class effects, so that a minority
  of strongly hurt (or helped) classes does not drag it; its variance is that of the
  seeds' own medians over S (a run that moves every class moves the shift) plus the image
  sampling of a median of C classes (pi/2 times their mean image variance, over C);
- a class's effect **beyond the shift**, effect - shift, is tested with the class's own
  variance (the crossed test's se) plus the shift's: t with Welch-Satterthwaite df;
- the **between-class spread** tau is the standard deviation of the true class effects
  beyond their sampling noise: a random-effects model over classes (effect_c ~
  N(mu, tau^2 + se_c^2)): the Paule-Mandel estimate (the tau^2 at which the generalised Q
  statistic equals its expectation, C - 1: DerSimonian-Laird's moment equation iterated to
  its fixed point) with the Q-profile interval (Viechtbauer 2007), the same equation at
  the chi-square quantiles, so the estimate always lies inside its interval.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from classbias_jax.audit.stats import per_class_sums

BISECTIONS = 60

SHIFT_METHOD = ('median over classes of the class effects; variance: that of each seed\'s '
                'median over seeds, plus pi/2 x the mean image variance of a class over C')
BEYOND_METHOD = ('class effect minus the shared shift, t-test with the class\'s crossed '
                 'seeds x images variance plus the shift\'s (Welch-Satterthwaite df)')
SPREAD_METHOD = ('random-effects standard deviation of the true class effects: Paule-Mandel '
                 '(iterated DerSimonian-Laird) estimate, Q-profile interval')


def _median(effects: np.ndarray) -> np.ndarray:
  """Median over the last axis, ignoring NaN (classes without images)."""
  with np.errstate(invalid='ignore'):
    return np.nanmedian(effects, axis=-1)


def shared_shift(diff: np.ndarray, labels: np.ndarray, num_classes: int,
                 confidence: float = 0.95) -> dict[str, float]:
  """The shift shared by all classes in one comparison, with its interval.

  diff float [S, N]: paired differences of correctness (as crossed_effect_test takes);
  labels int [N]. Returns floats effect (the median over classes of the class effects),
  se, df, low, high. The variance is the seeds' (the variance over seeds of each seed's
  median class effect, over S: a run that moves every class moves the shift) plus the
  images' (pi/2 times the mean over classes of the variance of a class's mean over its
  images, over C: the variance of a median of C noisy values). se and the interval are
  NaN with one seed.
  """
  s = diff.shape[0]
  n = np.bincount(labels, minlength=num_classes).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_seed = per_class_sums(diff.astype(np.float64), labels, num_classes) / n
  effect = float(_median(per_seed.mean(0)))
  nan = float('nan')
  if s < 2:
    return {'effect': effect, 'se': nan, 'df': nan, 'low': nan, 'high': nan}
  per_image = diff.mean(0)  # [N]
  with np.errstate(invalid='ignore', divide='ignore'):
    centred = per_image - (np.bincount(labels, per_image, num_classes) / n)[labels]
    var_class = np.bincount(labels, centred ** 2, num_classes) / (n - 1) / n  # [C]
  used = np.isfinite(var_class)
  parts = np.array([np.var(_median(per_seed), ddof=1) / s,
                    np.pi / 2 * np.mean(var_class[used]) / max(used.sum(), 1)])
  dfs = np.array([s - 1.0, max(float(np.sum(n[used] - 1)), 1.0)])
  var = float(parts.sum())
  se = float(np.sqrt(var))
  if se == 0:
    return {'effect': effect, 'se': 0.0, 'df': s - 1.0, 'low': effect, 'high': effect}
  df = float(var ** 2 / np.sum(parts ** 2 / dfs))
  half = stats.t.ppf(0.5 + confidence / 2, df) * se
  return {'effect': effect, 'se': se, 'df': df, 'low': effect - half, 'high': effect + half}


def beyond_shift(test, shift, confidence: float = 0.95) -> dict[str, np.ndarray]:
  """Each class's effect minus the shared shift, tested: float [C] arrays.

  test: the per-class test (effect, se, df [C], from crossed_effect_test / compare); shift:
  shared_shift's dict. Returns effect (class effect - shift), se (sqrt(se_c^2 +
  se_shift^2)), df (Welch-Satterthwaite), p (two-sided), low, high (t interval). p is NaN
  where the class test has none (one seed, no images).
  """
  effect = test['effect'] - shift['effect']
  var_c, var_s = np.square(test['se']), shift['se'] ** 2
  var = var_c + var_s
  with np.errstate(invalid='ignore', divide='ignore'):
    df = var ** 2 / (np.where(var_c > 0, var_c ** 2 / test['df'], 0.0) + var_s ** 2 / shift['df'])
    se = np.sqrt(var)
    p = 2 * stats.t.sf(np.abs(effect) / se, df)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
  flat = se == 0  # every cell the same and an exact shift: only an exact zero is no effect
  p = np.where(flat, np.where(effect == 0, 1.0, test['p']), p)
  half = np.where(flat, 0.0, half)
  p = np.where(np.isnan(test['p']), np.nan, p)
  return {'effect': effect, 'se': se, 'df': np.where(flat, test['df'], df), 'p': p,
          'low': effect - half, 'high': effect + half}


# ------------------------------------------------------------- between-class spread

def _fit(y: np.ndarray, v: np.ndarray, tau2: float) -> tuple[float, float]:
  """(weighted mean, generalised Q) of effects y with variances v at spread tau2."""
  w = 1.0 / (v + tau2)
  mu = float(np.sum(w * y) / np.sum(w))
  return mu, float(np.sum(w * (y - mu) ** 2))


def _q_root(y: np.ndarray, v: np.ndarray, target: float) -> float:
  """tau^2 at which the generalised Q equals target (Q falls as tau^2 grows); 0 when
  Q(0) is already below it. Bisection on tau in [0, 1] (effects are fractions).
  target C - 1: the Paule-Mandel estimate; a chi-square quantile: a Q-profile bound."""
  if _fit(y, v, 0.0)[1] <= target:
    return 0.0
  lo, hi = 0.0, 1.0
  for _ in range(BISECTIONS):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if _fit(y, v, mid ** 2)[1] > target else (lo, mid)
  return hi ** 2


def between_class_spread(effect: np.ndarray, se: np.ndarray, n: np.ndarray, seeds: int,
                         confidence: float = 0.95) -> dict[str, float]:
  """How class dependent one comparison is: tau, the sd of the true class effects [fraction].

  effect, se [C]: the per-class test's; n [C]: images per class; seeds: S. A class with no
  observed variance (right or wrong on every image in every run at both values) gets a
  floor of 0.25 / (S n)^2 (half a flip in its S n cells), not an infinite weight. Returns
  floats tau, low, high (Q-profile interval); NaN with one seed or fewer than 3 classes.
  """
  keep = np.isfinite(effect) & np.isfinite(se)
  nan = {'tau': float('nan'), 'low': float('nan'), 'high': float('nan')}
  if seeds < 2 or keep.sum() < 3:
    return nan
  y = effect[keep]
  v = np.maximum(se[keep] ** 2, 0.25 / (seeds * n[keep]) ** 2)
  k = y.size
  tail = (1 - confidence) / 2
  low = _q_root(y, v, stats.chi2.ppf(1 - tail, k - 1))
  high = _q_root(y, v, stats.chi2.ppf(tail, k - 1))
  point = _q_root(y, v, k - 1.0)
  return {'tau': float(np.sqrt(point)), 'low': float(np.sqrt(low)),
          'high': float(np.sqrt(high))}
