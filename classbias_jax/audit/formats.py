"""How report.md writes its numbers and tables: fractions as percent or signed points,
p-values, and markdown tables whose cells cannot break the table. Shared by the report's
text (markdown.py, dependence_markdown.py) and the fix study's section (fix/report.py)."""
from __future__ import annotations

from typing import Any, Mapping


def pct(x: float | None, digits: int = 1) -> str:
  """A fraction as percent, e.g. 0.1234 -> '12.3'; None -> 'n/a'."""
  return 'n/a' if x is None else f'{100 * x:.{digits}f}'


def signed(x: float | None) -> str:
  """A fraction as points with a sign, e.g. -0.052 -> '-5.2'; a value that rounds to zero
  is '+0.0', never '-0.0'; None -> 'n/a'."""
  return 'n/a' if x is None else f'{round(100 * x, 1) + 0.0:+.1f}'


def prob(x: float | None) -> str:
  """A p- or q-value: 3 decimals, scientific below 1e-3, '< 1e-15' below the t
  distribution's floating-point resolution; None -> 'n/a'."""
  if x is None:
    return 'n/a'
  if x < 1e-15:
    return '< 1e-15'
  return f'{x:.1e}' if x < 1e-3 else f'{x:.3f}'


def cell(text: Any) -> str:
  """A markdown table cell: pipes escaped so class names cannot break the table."""
  return str(text).replace('|', '\\|')


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
  """A markdown table's lines: the header, the rule, one line per row."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(cell(c) for c in row) + ' |' for row in rows]


def knob(stats: Mapping[str, Any]) -> str:
  """The swept knob's short name, from analysis.json's `sweep_name`."""
  return stats['sweep_name'].split('.')[-1]
