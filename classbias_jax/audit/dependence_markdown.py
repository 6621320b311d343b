"""report.md's class-dependence text: the opening, the summary's columns, each value's lead.

Reads the dict that analysis.analyze returns (`beyond_shift`, `class_dependence`,
`hurt_while_mean_improves`; dependence.py). Numbers are printed in percent and points.
"""
from __future__ import annotations

from typing import Any, Mapping

from classbias_jax.audit import formats


def _names(classes: list[str], k: int = 5) -> str:
  shown = ', '.join(f'**{c}**' for c in classes[:k])
  return shown + (f' and {len(classes) - k} more' if len(classes) > k else '')


def spread_text(spread: Mapping[str, Any] | None) -> str:
  """'3.1 (2.9-3.3)' points, or n/a."""
  if not spread or spread['tau'] is None:
    return 'n/a'
  return f'{formats.pct(spread["tau"])} ({formats.pct(spread["low"])}-{formats.pct(spread["high"])})'


def shift_text(beyond: Mapping[str, Any] | None) -> str:
  if not beyond:
    return 'n/a'
  shift = beyond['shift']
  interval = '' if shift['low'] is None else f' ({formats.signed(shift["low"])} to {formats.signed(shift["high"])})'
  return formats.signed(shift['effect']) + interval


def _compared(stats: Mapping[str, Any]) -> list[dict]:
  return [v for v in stats['values'] if v.get('beyond_shift') is not None]


def opening(stats: Mapping[str, Any]) -> list[str]:
  """The report's first finding: how class dependent the knob is, and who loses while the
  mean rises. Empty with one seed (nothing is tested)."""
  entries = _compared(stats)
  if not entries or stats['inference']['status'] == 'conditional':
    return []
  knob = formats.knob(stats)
  peak = max(entries, key=lambda v: v['class_dependence']['tau'] or 0)
  first = (f'**Class dependence.** Beyond the shift shared by all classes, the true class '
           f'effects of `{knob}={peak["value"]:g}` spread by {spread_text(peak["class_dependence"])}'
           f' points (standard deviation over classes, 95% interval), the most of any value '
           f'against `{stats["reference"]["value"]:g}`; its shared shift is '
           f'{shift_text(peak["beyond_shift"])} points.')
  flagged = sum(len(v['beyond_shift']['hurt']) + len(v['beyond_shift']['helped'])
                for v in entries)
  if not flagged:
    first += ' No class moves significantly more or less than that shift at any value.'
  lines = [first, '']
  for move in stats.get('hurt_while_mean_improves', []):
    lines += [f'**Hurt while the mean improves:** going from `{knob}={move["from"]:g}` to '
              f'`{move["to"]:g}` raises mean accuracy by {formats.pct(move["mean_change"])} points '
              f'but lowers {_names(move["classes"])} beyond the shift.', '']
  return lines


def summary_header() -> list[str]:
  return ['shared shift (95% CI)', 'spread tau (95% CI)', 'hurt / helped beyond shift']


def summary_cells(stats: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]:
  """The summary table's class-dependence cells of one value ('-' at the reference)."""
  beyond = entry.get('beyond_shift')
  if beyond is None:
    return ['-'] * 3
  tested = stats['inference']['status'] != 'conditional'
  counts = f'{len(beyond["hurt"])} / {len(beyond["helped"])}' if tested else 'not tested'
  return [shift_text(beyond), spread_text(entry['class_dependence']), counts]


def _rows(stats, entry, classes) -> list[list[str]]:
  ref = stats['values'][stats['reference']['index']]
  index = {n: i for i, n in enumerate(stats['class_names'])}
  beyond = entry['beyond_shift']['per_class']
  out = []
  for name in classes:
    c = index[name]
    out.append([name, formats.pct(ref['accuracy'][c]), formats.pct(entry['accuracy'][c]),
                formats.signed(entry['per_class']['effect'][c]),
                f'{formats.signed(beyond["effect"][c])} ({formats.signed(beyond["low"][c])} to '
                f'{formats.signed(beyond["high"][c])})', formats.prob(beyond['q'][c])])
  return out


def value_lead(stats: Mapping[str, Any], entry: Mapping[str, Any], top_k: int) -> list[str]:
  """A value's section opens with its shift, spread and the classes beyond the shift."""
  beyond = entry.get('beyond_shift')
  if beyond is None or stats['inference']['status'] == 'conditional':
    return []
  lines = [f'Shared shift {shift_text(beyond)} points; spread between classes '
           f'{spread_text(entry["class_dependence"])} points.', '']
  header = ['class', f'acc at {stats["reference"]["value"]:g}', 'acc here', 'effect',
            'beyond the shift (95% CI)', 'q (beyond)']
  for key, word in (('hurt', 'Hurt beyond the shift'), ('helped', 'Helped beyond the shift')):
    if beyond[key]:
      shown = beyond[key][:top_k]
      more = len(beyond[key]) - len(shown)
      lines += [f'{word} ({len(beyond[key])}' + (f'; {more} more in analysis.json' if more
                                                   else '') + '):', '']
      lines += formats.table(header, _rows(stats, entry, shown)) + ['']
  if not beyond['hurt'] and not beyond['helped']:
    lines += ['No class significantly hurt or helped beyond the shift.', '']
  return lines + ['Absolute effects (the shift included):', '']


def method(stats: Mapping[str, Any]) -> list[str]:
  """The caveat lines that say how the shift, the deviations and the spread are estimated."""
  beyond = stats.get('beyond_shift')
  if not beyond:
    return []
  m = beyond['method']
  return [f'- Shared shift: {m["shift"]}. Beyond the shift: {m["beyond"]}; q-values over a '
          f'second Benjamini-Hochberg family ({beyond["family"]}: {beyond["num_tests"]} tests).',
          f'- Spread between classes (tau): {m["spread"]}. The class variances are '
          'conservative, so with no true spread the interval often collapses to 0-0.']
