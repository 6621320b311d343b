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

from classbias_jax import analysis, arms

CONFIDENCE = analysis.CONFIDENCE
MEASURES = ('mean', 'worst_class', 'p10_class')


def arm_names(results: Mapping[str, Any]) -> list[str]:
  """The arm of each sweep value (results.npz's value_names, else from the values)."""
  return [str(n) for n in results.get('value_names', arms.names(results['sweep_values']))]


def uniform_value(results: Mapping[str, Any]) -> float | None:
  """The sweep value of the uniform arm: the report's reference in a fix study."""
  names = arm_names(results)
  return float(results['sweep_values'][names.index('uniform')]) if 'uniform' in names else None


def _interval(x: np.ndarray, low: float = 0.0, high: float = 1.0) -> dict[str, float | None]:
  """Mean of x [S] with a t interval clipped to [low, high], the values x can take (None
  with fewer than 2 values)."""
  x = x[~np.isnan(x)]
  if not x.size:
    return {'mean': None, 'low': None, 'high': None, 'seeds': 0}
  mean = float(x.mean())
  if x.size < 2:
    return {'mean': mean, 'low': None, 'high': None, 'seeds': 1}
  half = scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
  return {'mean': mean, 'low': max(mean - half, low), 'high': min(mean + half, high),
          'seeds': int(x.size)}


def per_seed(results: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Measure -> [V, S] test accuracies of each model (NaN for a diverged model)."""
  valid, _ = analysis.valid_models(results)
  acc = np.asarray(results['per_class_accuracy'], np.float64)  # [V, S, C]
  drop = lambda x: np.where(valid, x, np.nan)  # noqa: E731
  return {'mean': drop(np.asarray(results['mean_accuracy'], np.float64)),
          'worst_class': drop(np.nanmin(np.nan_to_num(acc, nan=np.inf), -1)),
          'p10_class': drop(np.percentile(np.nan_to_num(acc, nan=0.0), 10, axis=-1))}


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
          'changed': fix.get('changed', {}), 'policy_from': fix.get('policy_from')}


def _pct(x) -> str:
  return 'n/a' if x is None else f'{100 * x:.1f}'


def _with_interval(i: Mapping[str, Any], signed: bool = False) -> str:
  fmt = (lambda x: 'n/a' if x is None else f'{100 * x:+.1f}') if signed else _pct
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
        text = f'{x:g}: {_pct(acc)}'
        cells.append(f'**{text}**' if name in fix['changed'].get(arm, []) else text)
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  return lines
