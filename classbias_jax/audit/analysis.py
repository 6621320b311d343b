"""Per-class statistics of a sweep's results, assembled into one JSON-able dict.

Pure numpy/scipy on the dict that `results.load` returns; nothing here imports JAX. The
test, its variance components, the FDR family, the bootstrap and the power calculation
are in `stats.py`; docs/statistics.md says why each was chosen and how it was checked.
Notation: V sweep values, S seeds, C classes, N test images, n images of one class.
Accuracies and effects are fractions (0.05 = 5 percentage points).

The effect of sweep value v on class c, against a reference value r, is the mean over
seeds s and images i of class c of  D[s, i] = y[v, s, i] - y[r, s, i],  with y = 1 when
the model classifies the image correctly. Seeds are common random numbers (same init,
data order and augmentation draws for every sweep value), so D pairs the two models
trained with the same seed, on the same test image.

Every comparison of a report (each class at each non-reference value, against the
reference and against the knob's off value) is one Benjamini-Hochberg family; a class is
hurt or helped when its q-value is below ALPHA. With one seed nothing is flagged: the
run-to-run variation of a class cannot be told apart from an effect.

A class's run-to-run variance is pooled over the sweep's values by default (the value x
seed interaction of its accuracy: stats.run_pool), the pair's own where the pair varies
more than the other values; run_variance='pairwise' uses the two values compared alone.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, NamedTuple

import numpy as np

from classbias_jax import knob_table
from classbias_jax.results import class_accuracy
from classbias_jax.audit import dependence, effects, stats
from classbias_jax.audit.effects import (ALPHA, CONFIDENCE, SEEDS_FOR_FULL_TEST,
                                         TARGET_DROP, inference)
from classbias_jax.audit.replication import split_half_replication
from classbias_jax.errors import ConfigError
from classbias_jax.audit.stats import RUN_VARIANCE, TEST_NAME  # noqa: F401

FAMILY = ('every class at every non-reference sweep value, against the reference and '
          'against the off value')


# ------------------------------------------------------------------ building blocks

def off_index(sweep_name: str, sweep_values: np.ndarray) -> int | None:
  """Index of the knob's "off" value among sweep_values (weight_decay 0, crop_scale_min 1, ...).

  The knob is the last component of sweep_name; None when it has no known off value or
  the sweep does not include it.
  """
  knob = str(sweep_name).split('.')[-1]
  off = knob_table.off_values().get(knob)  # the knob table's off values
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


# ------------------------------------------------------------------------- analyze

def json_floats(x) -> list[float | None]:
  """A JSON-able list: NaN -> None, 6 significant decimals."""
  return [None if not np.isfinite(v) else round(float(v), 6) for v in np.ravel(x)]


def _named(mask: np.ndarray, effect: np.ndarray, names: list[str]) -> list[str]:
  """Names of the classes in `mask`, largest |effect| first."""
  idx = np.flatnonzero(mask)
  return [names[i] for i in idx[np.argsort(-np.abs(effect[idx]), kind='stable')]]


def _comparison_json(comp: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
  with np.errstate(invalid='ignore'):
    per_class = {'effect': comp['effect'], 'low': comp['low'], 'high': comp['high'],
                 'p': comp['p'], 'q': comp['q'], 'se': comp['se'], 'df': comp['df'],
                 'seed_sd': np.sqrt(comp['seed']), 'min_detectable_drop': comp['min_detectable'],
                 'seeds_needed': comp['seeds_needed'], 'run_values': comp['run_values'],
                 'homogeneity_p': comp['homogeneity_p']}
  return {
      'hurt': _named(comp['hurt'], comp['effect'], names),
      'helped': _named(comp['helped'], comp['effect'], names),
      'num_hurt': int(comp['hurt'].sum()), 'num_helped': int(comp['helped'].sum()),
      'num_seeds': int(comp['seeds']),
      'per_class': {k: json_floats(x) for k, x in per_class.items()},
  }


def _flows_json(results, valid, v, ref, comp, names, top) -> list[dict[str, Any]]:
  """Confusion flow of every hurt class, most hurt first."""
  labels, predictions = results['test_labels'], results['test_predictions']
  hurt = np.flatnonzero(comp['hurt'])
  out = []
  for c in hurt[np.argsort(comp['effect'][hurt], kind='stable')]:
    flow = effects.confusion_flow(predictions, labels, valid, v, ref, int(c), len(names), top)
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
  acc_low, acc_high = stats.percentile_interval(boot, CONFIDENCE)
  mean_low, mean_high = stats.percentile_interval(_mean_draws(boot, images), CONFIDENCE)
  one = lambda x: json_floats(x)[0]  # noqa: E731
  return [{
      'mean_accuracy': one(curves['mean'][v]),
      'mean_accuracy_low': one(mean_low[v]), 'mean_accuracy_high': one(mean_high[v]),
      'class_mean_accuracy': one(curves['class_mean'][v]),
      'worst_class_accuracy': one(curves['worst_class'][v]),
      'worst_class': names[curves['worst_class_index'][v]],
      'p10_class_accuracy': one(curves['p10_class'][v]),
      'accuracy': json_floats(accuracy[v]), 'accuracy_low': json_floats(acc_low[v]),
      'accuracy_high': json_floats(acc_high[v]),
  } for v in range(len(accuracy))]


def _effects_json(results, valid, v, ref, comps, top_flow) -> dict[str, Any]:
  """Sweep value v against the reference (and the off value): tests, hurt/helped, flows."""
  names = [str(n) for n in results['class_names']]
  comp = comps[v, 'ref']
  entry = {**_comparison_json(comp, names),
           'confusion_flow': _flows_json(results, valid, v, ref, comp, names, top_flow)}
  if (v, 'off') in comps:
    entry['against_off'] = _comparison_json(comps[v, 'off'], names)
  return entry


def _run_variance_json(comps: dict[tuple, dict], run_variance: str,
                       homogeneity_level: float) -> dict[str, Any]:
  """Which run-to-run variance ran, why, and how often each class kept the pair's own."""
  tested = [c for c in comps.values() if not c['self'] and c['seeds'] > 1]
  runs = np.concatenate([c['run_values'][~np.isnan(c['p'])] for c in tested] or [np.zeros(0)])
  most = int(runs.max()) if runs.size else 2
  if run_variance == 'pairwise':
    why = 'asked for (run_variance=pairwise): each comparison from its two values alone'
  elif most <= 2:
    why = 'pooled, but each comparison had only its own two values to pool'
  else:
    why = (f'the {most} values share their seeds, so the value x seed interaction of each '
           f'class gives its run-to-run variance (values - 1)(seeds - 1) degrees of freedom '
           'instead of seeds - 1; a comparison whose own values vary more than the rest '
           f'(F-test, p < {homogeneity_level:g}) keeps its own')
  return {'method': run_variance, 'why': why, 'homogeneity_level': homogeneity_level,
          'values_pooled': most, 'num_pooled': int(np.sum(runs > 2)),
          'num_own': int(np.sum(runs <= 2))}


def _replication_json(per_value, pooled, values, num_splits) -> dict[str, Any]:
  rounded = lambda r: {k: (None if x is None else round(x, 6)) for k, x in r.items()}  # noqa
  return {'num_splits': num_splits,
          'values': [{'value': float(values[v]), 'index': v, **rounded(r)}
                     for v, r in per_value.items()],
          'pooled': pooled and rounded(pooled)}


class _Sweep(NamedTuple):
  """What every part of the analysis reads: labels [N], names [C], values [V], valid bool
  [V, S], correct bool [V, S, N], images per class [C], accuracy [V, C] (mean over the
  valid seeds), curves (summary_curves of accuracy), notes (warnings)."""
  labels: np.ndarray
  names: list[str]
  values: np.ndarray
  valid: np.ndarray
  correct: np.ndarray
  images: np.ndarray
  accuracy: np.ndarray
  curves: dict[str, np.ndarray]
  notes: list[str]


def _sweep(results: Mapping[str, Any]) -> _Sweep:
  labels = np.asarray(results['test_labels'])
  names = [str(n) for n in results['class_names']]
  values = np.asarray(results['sweep_values'], np.float64)
  valid, notes = valid_models(results)
  correct = np.asarray(results['test_predictions']) == labels  # [V, S, N]
  images = np.bincount(labels, minlength=len(names)).astype(np.float64)
  accuracy = masked_seed_mean(class_accuracy(correct, labels, len(names)), valid)  # [V, C]
  notes += [f'no usable model at {results["sweep_name"]}={values[v]:g}'
            for v in range(len(values)) if not valid[v].any()]
  return _Sweep(labels, names, values, valid, correct, images, accuracy,
                summary_curves(accuracy, images), notes)


def _usable_off(results: Mapping[str, Any], sweep: _Sweep, ref: int) -> int | None:
  """The off value's index, when the sweep has it, it is not the reference and some of its
  models are valid."""
  off = off_index(results['sweep_name'], sweep.values)
  return None if off == ref or off is None or not sweep.valid[off].any() else off


def _values_json(results, sweep: _Sweep, boot, comps, dependent, ref: int,
                 top_flow: int) -> list[dict[str, Any]]:
  """`values` of analysis.json: one entry per sweep value (analyze's docstring)."""
  none = {'beyond_shift': None, 'class_dependence': None, 'flipped_images': []}
  accuracy = _accuracy_json(sweep.accuracy, sweep.curves, boot, sweep.images, sweep.names)
  return [{'value': float(sweep.values[v]), 'index': v,
           'num_models': int(sweep.valid[v].sum()), **acc,
           **_effects_json(results, sweep.valid, v, ref, comps, top_flow),
           **dependent.get(v, none)} for v, acc in enumerate(accuracy)]


def _study_json(results, sweep: _Sweep, alpha: float, num_bootstrap: int,
                run_variance: str) -> dict[str, Any]:
  """The head of analysis.json: what was analysed and how."""
  return {
      'sweep_name': str(results['sweep_name']), 'sweep_values': json_floats(sweep.values),
      'seeds': [int(s) for s in results['seeds']], 'class_names': sweep.names,
      'num_classes': len(sweep.names), 'num_test_images': int(sweep.labels.size),
      'images_per_class': [int(n) for n in sweep.images],
      'alpha': alpha, 'confidence': CONFIDENCE, 'num_bootstrap': num_bootstrap,
      'test': stats.test_name(run_variance), 'warnings': sweep.notes}


def _tests_json(comps: dict[tuple, dict], family: dict, run_variance: str) -> dict[str, Any]:
  """The run-to-run variance used, what the seeds allow to conclude, the FDR family."""
  seeds = min([c['seeds'] for c in comps.values() if not c['self']] or [0])
  return {
      'run_variance': _run_variance_json(comps, run_variance, stats.HOMOGENEITY_LEVEL),
      'inference': {'num_seeds': int(seeds), 'status': inference(seeds),
                    'seeds_for_full_test': SEEDS_FOR_FULL_TEST},
      'fdr': {'method': 'Benjamini-Hochberg', 'family': FAMILY, **family}}


def _models_json(results, sweep: _Sweep, ref: int, off: int | None,
                 reference: float | None) -> dict[str, Any]:
  """The models left out, the reference value and the off value."""
  values = sweep.values
  return {
      'excluded_models': [{'value': float(values[v]), 'seed': int(results['seeds'][s])}
                          for v, s in zip(*np.nonzero(~sweep.valid))],
      'reference': {'value': float(values[ref]), 'index': ref,
                    'chosen_by': 'best mean accuracy' if reference is None else 'given'},
      'off_reference': None if off is None else {'value': float(values[off]), 'index': off}}


def analyze(results: Mapping[str, Any], reference: float | None = None, alpha: float = ALPHA,
            num_bootstrap: int = 1000, num_splits: int = 5, top_flow: int = 5,
            seed: int = 0, run_variance: str = RUN_VARIANCE[0]) -> dict[str, Any]:
  """All statistics of one sweep as a JSON-able dict (see the module docstring for methods).

  results: the dict from results.load. reference: a sweep value to compare against
  (default: the value with the best mean accuracy). Raises ConfigError on a reference that
  is not a sweep value. Accuracies and effects are fractions; per-class lists follow
  class_names. `values[k]` holds, for sweep value k: summary numbers, per-class accuracy
  with bootstrap intervals, the effect against the reference (effect, low, high, p, q per
  class; `hurt` and `helped`: class names at q < alpha, largest effect first), the
  confusion flow of each hurt class and, when the knob has an "off" value other than the
  reference, the same comparison against it under `against_off`; `beyond_shift`,
  `class_dependence` and `flipped_images` from dependence.py (None at the reference).
  run_variance: one of RUN_VARIANCE (ConfigError otherwise), recorded with why under
  `run_variance`.
  """
  if run_variance not in RUN_VARIANCE:
    raise ConfigError(f'run_variance {run_variance!r} is not one of {", ".join(RUN_VARIANCE)}')
  rng = np.random.default_rng(seed)
  sweep = _sweep(results)
  num_classes = len(sweep.names)
  ref = reference_index(sweep.values, sweep.curves['mean'], reference)
  off = _usable_off(results, sweep, ref)
  boot = stats.bootstrap_accuracy(sweep.correct, sweep.labels, sweep.valid, num_classes,
                                  num_bootstrap, rng)
  comps, family = effects.flag_all(effects.comparisons(
      sweep.correct, sweep.valid, sweep.labels, num_classes, ref, off, run_variance), alpha)
  dependent, beyond = dependence.analyze(results, sweep.correct, sweep.valid, comps, ref, alpha)
  values_json = _values_json(results, sweep, boot, comps, dependent, ref, top_flow)
  replication = split_half_replication(sweep.correct, sweep.labels, sweep.valid, ref,
                                       num_classes, alpha, num_splits, rng)
  return {
      **_study_json(results, sweep, alpha, num_bootstrap, run_variance),
      **_tests_json(comps, family, run_variance), 'beyond_shift': beyond,
      'hurt_while_mean_improves': dependence.hurt_while_mean_improves(values_json, ref),
      'power': {'power': stats.POWER, 'target_drop': TARGET_DROP, 'level': family['level']},
      **_models_json(results, sweep, ref, off, reference),
      'focus_index': _focus_index(values_json, ref), 'values': values_json,
      'replication': _replication_json(*replication, sweep.values, num_splits),
  }
