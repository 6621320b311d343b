"""The report of a fix study (configs/fix.py): the arms compared on the test split.

Per arm, over its seeds: mean accuracy, worst-class accuracy (the lowest class accuracy of
each model) and the 10th-percentile class accuracy, each with a t interval over seeds; and
the same three as paired differences against the best uniform arm (arm and uniform
trained with the same seed), whose interval says whether an arm beats it. The per-class
effects against the uniform arm are the analysis' (same tests, one FDR family).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import stats as scipy_stats

from classbias_jax.audit import analysis, formats
from classbias_jax import configs
from classbias_jax.fix import policy

CONFIDENCE = analysis.CONFIDENCE
MEASURES = ('mean', 'worst_class', 'p10_class')


def arm_names(results: Mapping[str, Any]) -> list[str]:
  """The arm of each sweep value (results.npz's value_names, else from the values)."""
  return [str(n) for n in results.get('value_names', configs.arm_names(results['sweep_values']))]


def uniform_value(results: Mapping[str, Any]) -> float | None:
  """The sweep value of the uniform arm: the report's reference in a fix study."""
  names = arm_names(results)
  return float(results['sweep_values'][names.index('uniform')]) if 'uniform' in names else None


def _interval(x: np.ndarray, low: float = 0.0, high: float = 1.0,
              confidence: float = CONFIDENCE) -> dict[str, float | None]:
  """Mean of x [S] with a t interval clipped to [low, high], the values x can take (None
  with fewer than 2 values)."""
  x = x[~np.isnan(x)]
  if not x.size:
    return {'mean': None, 'low': None, 'high': None, 'seeds': 0}
  mean = float(x.mean())
  if x.size < 2:
    return {'mean': mean, 'low': None, 'high': None, 'seeds': 1}
  half = scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
  return {'mean': mean, 'low': max(mean - half, low), 'high': min(mean + half, high),
          'seeds': int(x.size)}


def per_seed(results: Mapping[str, Any], split: str = 'test') -> dict[str, np.ndarray]:
  """Measure -> [V, S] accuracies of each model on `split` ('test' or 'val'; NaN for a
  diverged model)."""
  valid, _ = analysis.valid_models(results)
  if split == 'test':
    acc = np.asarray(results['per_class_accuracy'], np.float64)  # [V, S, C]
    mean = np.asarray(results['mean_accuracy'], np.float64)  # over images
  else:
    labels, correct = policy.validation_correct(results)
    acc = analysis.class_accuracy(correct, labels, len(results['class_names']))
    mean = correct.mean(-1)
  drop = lambda x: np.where(valid, x, np.nan)  # noqa: E731
  return {'mean': drop(mean),
          'worst_class': drop(np.nanmin(np.nan_to_num(acc, nan=np.inf), -1)),
          'p10_class': drop(np.percentile(np.nan_to_num(acc, nan=0.0), 10, axis=-1))}


def recommend(results: Mapping[str, Any]) -> dict[str, Any] | None:
  """The arm to use, chosen on the validation split (None without one): the arm whose
  worst class gains most over the uniform arm, among the arms whose paired gain has a
  Bonferroni t interval (over the other arms) clear of 0 and whose mean accuracy is at
  most 0.5 points below uniform's; the uniform arm when none is. A table that looked
  better in the sweep's uniform models can still lose here: a knob applied to a few
  classes alone marks their training images (docs/studies.md, Fashion-MNIST)."""
  names = arm_names(results)
  if 'val_predictions' not in results or 'uniform' not in names:
    return None
  x, u = per_seed(results, 'val'), names.index('uniform')
  others = [v for v in range(len(names)) if v != u]
  level = 1 - (1 - CONFIDENCE) / max(len(others), 1)
  arms_out, best, best_gain = [], 'uniform', 0.0
  for v in others:
    worst = _interval(x['worst_class'][v] - x['worst_class'][u], -1.0, 1.0, level)
    mean = _interval(x['mean'][v] - x['mean'][u], -1.0, 1.0, level)
    arms_out.append({'arm': names[v], 'worst_class_vs_uniform': worst, 'mean_vs_uniform': mean})
    if (worst['low'] is not None and worst['low'] > 0 and mean['mean'] >= -0.005
        and worst['mean'] > best_gain):
      best, best_gain = names[v], worst['mean']
  return {'arm': best, 'confidence': level, 'arms': arms_out}


def summarize(results: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
  """The arms' summary for analysis.json's `fix` and the report's section."""
  names = arm_names(results)
  x = per_seed(results)
  u = names.index('uniform') if 'uniform' in names else None
  out = []
  for v, name in enumerate(names):
    entry = {'arm': name, 'value': float(results['sweep_values'][v])}
    for m in MEASURES:
      entry[m] = _interval(x[m][v])
      if u is not None and v != u:
        entry[f'{m}_vs_uniform'] = _interval(x[m][v] - x[m][u], -1.0, 1.0)
    out.append(entry)
  fix = (config.get('resolved') or {}).get('fix') or {}
  return {'arms': out, 'uniform_index': u, 'confidence': CONFIDENCE,
          'knob': fix.get('knob'), 'tables': fix.get('tables', {}),
          'changed': fix.get('changed', {}), 'policy_from': fix.get('policy_from'),
          'same_as': fix.get('same_as', {}), 'recommended': recommend(results)}


def _with_interval(i: Mapping[str, Any], signed: bool = False) -> str:
  fmt = formats.signed if signed else formats.pct
  if i['low'] is None:
    return fmt(i['mean'])
  return f'{fmt(i["mean"])} ({fmt(i["low"])} to {fmt(i["high"])})'


def _verdict(entry: Mapping[str, Any]) -> str:
  d = entry.get('worst_class_vs_uniform')
  if d is None or d['low'] is None:
    return ''
  if d['low'] > 0:
    return 'better worst class'
  return 'worse worst class' if d['high'] < 0 else 'no clear change'


def section(fix: Mapping[str, Any], class_names: list[str], values: list[dict]) -> list[str]:
  """report.md's fix section: the arms table, and each class's knob value and accuracy."""
  level = f'{100 * fix["confidence"]:.0f}%'
  lines = ['## The fix: arms on the test split', '',
           f'Each arm over its seeds, with {level} t intervals over seeds; "vs uniform" is the '
           'paired difference against the best uniform arm (same seeds), in points. The '
           'per-class effects below are against the uniform arm. In the sections below, '
           'the values of `fix.arm` are the arms: ' + ', '.join(
               f'{e["value"]:g} = {e["arm"]}' for e in fix['arms']) + '.', '',
           '| arm | mean acc | worst class | 10th-pct class | mean vs uniform | '
           'worst class vs uniform | 10th-pct vs uniform | |', '|' + '---|' * 8]
  for e in fix['arms']:
    vs = [_with_interval(e[f'{m}_vs_uniform'], True) if f'{m}_vs_uniform' in e else '-'
          for m in MEASURES]
    lines.append(f'| {e["arm"]} | ' + ' | '.join(_with_interval(e[m]) for m in MEASURES)
                 + ' | ' + ' | '.join(vs) + f' | {_verdict(e)} |')
  lines.append('')
  rec = fix.get('recommended')
  if rec:
    gains = ', '.join(f'{a["arm"]} {_with_interval(a["worst_class_vs_uniform"], True)}'
                      for a in rec['arms'])
    lines += [f'**Recommended on the validation split: {rec["arm"]}.** The rule '
              '(fix_report.recommend): the largest worst-class gain over the uniform arm '
              f'whose {100 * rec["confidence"]:.1f}% paired interval (Bonferroni over the '
              'arms) is clear of 0, at a mean accuracy at most 0.5 points below uniform\'s; '
              f'else uniform. Worst-class gains on validation: {gains}. The test table '
              'above is then a confirmation, not the choice.', '']
  for arm, twin in (fix.get('same_as') or {}).items():
    lines += [f'Arm {arm} has the {twin} arm\'s table: it would train the same models with '
              f'the same seeds, so it was trained once, as {twin}.', '']
  tables = fix.get('tables') or {}
  if tables:
    knob = fix.get('knob') or 'knob'
    arm_names = [e['arm'] for e in fix['arms']]
    lines += [f'Each class\'s `{knob}` and test accuracy (%) per arm; **bold**: a value the '
              'arm changed from the uniform one.', '',
              '| class | ' + ' | '.join(arm_names) + ' |', '|' + '---|' * (len(arm_names) + 1)]
    for c, name in enumerate(class_names):
      cells = []
      for v, arm in enumerate(arm_names):
        x, acc = tables[arm][c], values[v]['accuracy'][c]
        text = f'{x:g}: {formats.pct(acc)}'
        cells.append(f'**{text}**' if name in fix['changed'].get(arm, []) else text)
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return lines
