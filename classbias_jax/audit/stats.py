"""The per-class test, its variance components, the FDR family and the design's power.

Pure numpy/scipy; see docs/statistics.md for the derivation and the simulations behind
each choice. Notation: S seeds, N test images, n images of one class, C classes.

For one comparison (sweep value v against reference r) and one class,

    D[s, i] = y[v, s, i] - y[r, s, i]  =  effect + a_s + b_i + e_si,

with y = 1 when the model gets test image i right, seeds s and the class's images i both
random (a crossed design, Clark 1973). From the two-way ANOVA mean squares,

    S n Var(mean D) = n var_a + S var_b + var_e  ~  MS_seed + (MS_image - MS_res)+,

each class with its own seed component, and a t reference distribution with
Satterthwaite's degrees of freedom. The seed term (the class's run-to-run variance) comes
from one of two places (RUN_VARIANCE):

  pooled    the value x seed interaction of the class's logit accuracy over the V' sweep
            values that share the pair's seeds, (V' - 1)(S - 1) degrees of freedom,
            brought back to the accuracy scale at the pair's accuracies (run_pool), unless
            the pair's own runs vary more than the other values' (an F-test at
            HOMOGENEITY_LEVEL), then the pair's own;
  pairwise  the pair's own MS_seed, S - 1 degrees of freedom.

With two values they are the same. The class's seed component is never replaced by a pool
over classes: classes differ several-fold in how much a new training run moves them, and
a pooled floor made the test liberal at 2 seeds. With one seed the run-to-run term cannot
be estimated at all: effects and intervals are then conditional on that pair of runs and
no p-value is given.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

POWER = 0.8  # the power at which the minimum detectable effect is stated
MAX_SEEDS = 1024  # seeds_needed gives up (inf) beyond this

RUN_VARIANCE = ('pooled', 'pairwise')  # where the run-to-run term comes from; first: default
# The homogeneity check's level: a pair whose own run variance exceeds the other values' at
# this p-value keeps its own. Chosen by simulation (docs/statistics.md): 0.1 let a value
# with 4x the run sd through too often at 7 values; 0.2 holds the level there and keeps
# the recall of a 10-point drop at 4 seeds at 0.79-0.91 (4-7 values).
HOMOGENEITY_LEVEL = 0.2
BROKEN_RATIO = 50.0  # a value whose runs vary this much more than the class's median value

TEST_NAME = ('crossed random-effects t-test over seeds x images, each class with its own '
             'seed variance (Satterthwaite df), paired by seed and image')


def test_name(run_variance: str) -> str:
  """The test's one-line description for a RUN_VARIANCE choice."""
  where = {'pooled': 'pooled over the sweep values as the value x seed interaction, the '
                     "pair's own where its values vary more",
           'pairwise': 'from the two values compared'}[run_variance]
  return f'{TEST_NAME}; run-to-run variance {where}'


def bh_qvalues(p) -> np.ndarray:
  """Benjamini-Hochberg q-values of any shape; NaN p-values stay NaN and are not counted."""
  p = np.asarray(p, np.float64)
  q = np.full(p.shape, np.nan)
  ok = ~np.isnan(p)
  if ok.any():
    q[ok] = stats.false_discovery_control(p[ok], method='bh')
  return q


def per_class_sums(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Sums of values [S, N] over the images of each class -> [S, C]."""
  s = values.shape[0]
  index = (np.arange(s)[:, None] * num_classes + labels[None, :]).ravel()
  sums = np.bincount(index, weights=values.ravel(), minlength=s * num_classes)
  return sums.reshape(s, num_classes)


def mean_squares(diff: np.ndarray, labels: np.ndarray, num_classes: int):
  """Two-way ANOVA of diff [S, N] within each class: (grand mean, MS, df, n), [C] each."""
  s = diff.shape[0]
  n = np.bincount(labels, minlength=num_classes).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    seed_mean = per_class_sums(diff, labels, num_classes) / n  # [S, C]
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


def components(ms, n, s: int) -> dict[str, np.ndarray]:
  """Variance components per class [C] (negative estimates set to zero).

  seed: var_a, the class-wide shift a new pair of runs brings; image: var_b, how much the
  effect differs between images; res: var_e, the seed x image churn.
  """
  with np.errstate(invalid='ignore', divide='ignore'):
    seed = np.where(s > 1, np.maximum(ms['seed'] - ms['res'], 0.0) / n, np.nan)
    res = np.where(s > 1, ms['res'], np.nan)
    image = np.maximum(ms['image'] - np.nan_to_num(res), 0.0) / s
  return {'seed': seed, 'image': image, 'res': res}


def _satterthwaite(terms: dict, df: dict) -> tuple[np.ndarray, np.ndarray]:
  """Sum of signed mean-square terms and its Satterthwaite degrees of freedom."""
  total = sum(terms.values())
  with np.errstate(invalid='ignore', divide='ignore'):
    denom = sum(np.where(terms[k] != 0, terms[k] ** 2 / np.maximum(df[k], 1), 0.0)
                for k in terms)
    return total, total ** 2 / denom


def run_pool(per_seed: np.ndarray, images: np.ndarray,
             pair: tuple[int, int] = (0, 1)) -> dict[str, np.ndarray]:
  """The value x seed interaction of each class's logit accuracy: its run-to-run variance.

  per_seed float [V', S, C]: accuracy (fraction) of every model of V' values at the same S
  seeds; images [C]: test images per class; pair: the positions of the two values compared.
  On the logit scale ((k + 1/2) / (n + 1) for k of n right) a run shift moves a class alike
  at any accuracy, so a knob that moves a class's accuracy leaves this variance as it is.
  A value where the class's runs vary far more than at the others (a knob value where the
  model breaks down: broken_values) leaves that class's pool. Returns, per class [C]: ss
  (interaction sum of squares, logit^2), df ((values - 1)(S - 1)), values (pooled, the pair
  included), own (variance over seeds of the pair's logit difference), slope2 (the sum over
  the pair of the mean squared d accuracy / d logit, to bring a logit variance back to
  accuracy), and others_ss, others_df: the interaction of the pooled values but the pair.
  """
  n = np.asarray(images, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    acc = (np.asarray(per_seed, np.float64) * n + 0.5) / (n + 1)
    logit = np.log(acc / (1 - acc))
  s = per_seed.shape[1]
  i, j = pair
  in_pair = np.isin(np.arange(len(logit)), pair)[:, None]
  own = (logit[i] - logit[j]).var(0, ddof=1) if s > 1 else np.full(n.shape, np.nan)
  keep = in_pair | (~broken_values(logit, j) if s > 1 else True)
  ss, values = _interaction_ss(logit, keep)
  others_ss, others = _interaction_ss(logit, keep & ~in_pair)
  slope = acc * (1 - acc)
  return {'ss': ss, 'df': (values - 1) * (s - 1), 'values': values, 'own': own,
          'slope2': (slope[i] ** 2).mean(0) + (slope[j] ** 2).mean(0),
          'others_ss': np.where(others > 1, others_ss, 0.0),
          'others_df': np.maximum(others - 1, 0) * (s - 1)}


def broken_values(logit: np.ndarray, reference: int) -> np.ndarray:
  """Values whose runs vary BROKEN_RATIO times more than the class's median value: bool
  [V', C], from logit [V', S, C].

  Each value's spread is the variance over seeds of its logit less the reference's, its
  anchor the median spread of the values but the reference. Under equal run variances
  (normal logits, 200,000 classes) a value is called broken in 1% of classes at 4 values
  and 2 seeds, 0.2% at 7 values, 0.05% or less at 3 seeds and never with three values.
  """
  spread = (logit - logit[reference]).var(1, ddof=1)  # [V', C]; 0 at the reference
  anchor = np.median(np.delete(spread, reference, axis=0), axis=0)
  return spread > BROKEN_RATIO * anchor


def _interaction_ss(logit: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Value x seed interaction sum of squares [C] over the values each class keeps, and
  their count [C]: logit [V', S, C], keep bool [V', C]."""
  w = keep[:, None, :].astype(np.float64)
  count = keep.sum(0).astype(np.float64)
  x = np.where(w > 0, logit, 0.0)
  with np.errstate(invalid='ignore', divide='ignore'):
    seed_mean = x.sum(0) / count  # [S, C]
    resid = (x - x.mean(1, keepdims=True) - seed_mean + seed_mean.mean(0)) * w
  return (resid ** 2).sum((0, 1)), count


def pooled_seed_term(ms, df, n, s: int, pool, level: float = HOMOGENEITY_LEVEL):
  """MS_seed and its df [C] from the run pool, or the pair's own where the check fails.

  The check: the pair's seed-level logit differences have variance 2 sigma^2 under equal
  variances, so (own / 2) / MS_rest ~ F(S - 1, df_rest), MS_rest being the interaction of
  the other pooled values alone ((values - 3)(S - 1) df, independent of the pair's data),
  or with three values the pool less the pair's part ((values - 2)(S - 1) df). Where it
  passes, MS_seed = n MS_int slope2 (the pair's seed-level difference variance, back on
  the accuracy scale) on (values - 1)(S - 1) df; a class with nothing to pool keeps its
  own. Returns (ms, df, the check's p [C], values pooled [C], 2 for the pair's own).
  """
  own = pool['own']
  with np.errstate(invalid='ignore', divide='ignore'):
    three = (pool['values'] - 2) * (s - 1)  # three values: the pool less the pair's part
    rest_df = np.where(pool['others_df'] > 0, pool['others_df'], three)
    rest = np.where(pool['others_df'] > 0, pool['others_ss'] / pool['others_df'],
                    np.maximum(pool['ss'] - (s - 1) * own / 2, 0.0) / three)
    ratio = np.where(own == 0, 0.0, own / 2 / rest)  # inf: the pair alone varies
    check = np.where(pool['values'] > 2, stats.f.sf(ratio, s - 1, rest_df), np.nan)
    seed = n * pool['ss'] / pool['df'] * pool['slope2']
  pooled = check >= level
  ms = {**ms, 'seed': np.where(pooled, seed, ms['seed'])}
  df = {**df, 'seed': np.where(pooled, pool['df'], s - 1.0)}
  return ms, df, check, np.where(pooled, pool['values'], 2.0)


def variance_of_mean(ms, df, n, s: int) -> tuple[np.ndarray, np.ndarray]:
  """S n Var(mean diff) per class [C] and its Satterthwaite degrees of freedom [C].

  The seed term is MS_seed (expectation n var_a + var_e: the class's own run-to-run shift
  plus the churn), never below MS_res; the image term enters as MS_image - MS_res when
  positive. The degrees of freedom are Satterthwaite's but at most the seed term's own
  (df['seed']: S - 1, or (V' - 1)(S - 1) pooled): an estimate from few df that comes out
  small by chance would otherwise raise the df too (7.7% of null sweeps flagged at 4
  seeds, tests/test_stats_simulation.py's generator).
  With one seed there is neither seed nor residual term: MS_image alone, the paired test
  over images.
  """
  if s == 1:
    return ms['image'], df['image']
  above = ms['image'] > ms['res'] * (1 + 1e-9) + 1e-15  # equal up to rounding: a tie
  terms = {'seed': np.maximum(ms['seed'], ms['res']), 'image': np.where(above, ms['image'], 0.0),
           'res': np.where(above, -ms['res'], 0.0)}
  total, dof = _satterthwaite(terms, df)
  return total, np.minimum(dof, df['seed'])


def crossed_effect_test(diff: np.ndarray, labels: np.ndarray, num_classes: int,
                        pool=None) -> dict[str, np.ndarray]:
  """Tests mean(diff) = 0 per class, seeds and images crossed random (module docstring).

  diff float [S, N]: paired differences of correctness (seed s, test image i); labels
  int [N]; pool: run_pool of the sweep's values at the same seeds (None, or two values:
  the pair's own seed term). Returns float [C] arrays effect, se, df, p, n (images per
  class), the variance components seed, image, res, homogeneity_p (the pool's check, NaN
  when none ran) and run_values (the values whose runs gave the seed term: 2 for the
  pair's own). p is NaN with one seed (no run-to-run term) and for a class without images.
  """
  s = diff.shape[0]
  effect, ms, df, n = mean_squares(np.asarray(diff, np.float64), labels, num_classes)
  check, run_values = np.full(num_classes, np.nan), np.full(num_classes, 2.0)
  if pool is not None and s > 1:
    ms, df, check, run_values = pooled_seed_term(ms, df, n, s, pool)
  var_sum, dof = variance_of_mean(ms, df, n, s)
  with np.errstate(invalid='ignore', divide='ignore'):
    se = np.sqrt(np.maximum(var_sum, 0.0) / (s * n))
    p = 2 * stats.t.sf(np.abs(effect) / se, dof)
  # Zero variance: every cell has the same difference. Exact sign-flip p over the images.
  flat = se == 0
  p = np.where(flat, np.where(effect == 0, 1.0, np.minimum(1.0, 2.0 ** (1 - n))), p)
  dof = np.where(flat, n - 1, dof)
  if s == 1:
    p = np.full(num_classes, np.nan)
  missing = n == 0
  out = {'effect': effect, 'se': se, 'df': dof, 'p': p}
  out = {k: np.where(missing, np.nan, x) for k, x in out.items()}
  comp = {**components(ms, n, s), 'homogeneity_p': check}
  return {**out, 'n': n, 'run_values': run_values,
          **{k: np.where(missing, np.nan, x) for k, x in comp.items()}}


def effect_interval(test, bounds, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
  """The test's t interval, clipped to bounds = (lowest [C], highest [C]) possible effect.

  A t interval on few degrees of freedom can run far past what accuracy allows.
  """
  with np.errstate(invalid='ignore'):
    half = stats.t.ppf(0.5 + confidence / 2, np.maximum(test['df'], 1e-9)) * test['se']
  half = np.where(test['se'] == 0, 0.0, half)
  return (np.maximum(test['effect'] - half, bounds[0]),
          np.minimum(test['effect'] + half, bounds[1]))


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


def percentile_interval(draws: np.ndarray, confidence: float = 0.95):
  """(low, high) percentiles over the last axis of bootstrap draws (NaN rows stay NaN)."""
  tail = 100 * (1 - confidence) / 2
  return np.percentile(draws, [tail, 100 - tail], axis=-1)


# --------------------------------------------------------------------------- power

def _projected(comp, n, s) -> tuple[np.ndarray, np.ndarray]:
  """Var(mean diff) and its Satterthwaite df for a design with s seeds, from components
  (comp['run_values'], default 2: the values whose runs give the seed term its df)."""
  var_e = comp['res']
  runs = np.asarray(comp.get('run_values', 2.0), np.float64)
  ms = {'seed': n * comp['seed'] + var_e, 'image': s * comp['image'] + var_e, 'res': var_e}
  df = {'seed': (runs - 1) * (s - 1.0) + 0 * n, 'image': n - 1 + 0 * s,
        'res': (s - 1.0) * (n - 1)}
  terms = {'seed': ms['seed'], 'image': ms['image'], 'res': -ms['res']}
  total, dof = _satterthwaite(terms, df)
  dof = np.minimum(dof, df['seed'])
  with np.errstate(invalid='ignore', divide='ignore'):
    return total / (s * n), dof


def detectable_effect(comp, n, s, level: float, power: float = POWER,
                      churn: float = 0.0) -> np.ndarray:
  """The smallest |effect| that a design with s seeds flags with probability `power` [C].

  comp: the variance components of crossed_effect_test (and its run_values); level: the
  two-sided p-value a flag needs; churn: a floor on var_e (a class right on every image in
  every run shows none, yet a drop would bring some). NaN with fewer than two seeds (the
  run-to-run term is unknown).
  """
  if np.ndim(s) == 0 and s < 2:
    return np.full(np.shape(n), np.nan)
  comp = {**comp, 'res': np.maximum(comp['res'], churn)}
  var, dof = _projected(comp, n, s)
  with np.errstate(invalid='ignore'):
    crit = stats.t.ppf(1 - level / 2, dof) + stats.t.ppf(power, dof)
    return np.where(var > 0, crit * np.sqrt(var), 0.0)


def seeds_needed(comp, n, target: float, level: float, power: float = POWER,
                 churn: float = 0.0) -> np.ndarray:
  """Seeds per value for a `target` drop to be flagged with probability `power`: float [C].

  inf when no number of seeds up to MAX_SEEDS does it (the image term does not shrink with
  seeds: the class needs more test images); NaN when the components are unknown.
  """
  n = np.asarray(n, np.float64)
  mde = lambda s: detectable_effect(comp, n, s, level, power, churn)  # noqa: E731, falls with s
  lo, hi = np.full(n.shape, 2.0), np.full(n.shape, float(MAX_SEEDS))
  reachable = mde(hi) <= target
  for _ in range(int(np.ceil(np.log2(MAX_SEEDS)))):  # bisection: mde(hi) <= target
    mid = np.floor((lo + hi) / 2)
    ok = mde(mid) <= target
    hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
  first = np.where(mde(lo) <= target, lo, hi)
  unknown = np.isnan(comp['seed']) | np.isnan(comp['res'])
  return np.where(unknown, np.nan, np.where(reachable, first, np.inf))
