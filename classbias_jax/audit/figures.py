"""Matplotlib figures from results arrays (see results.py) and analysis dicts (analysis.py).

No training imports. Every figure is written as PNG at `path` and as PDF beside it, and its
function returns `path` (or None when the data for it are absent). Class names are drawn
only for the classes a figure highlights, so the figures stay legible at C = 1000.
"""
from __future__ import annotations

import io
import os
from typing import Any, Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from classbias_jax.audit.analysis import masked_seed_mean  # noqa: E402
from classbias_jax import files, knob_table  # noqa: E402

HURT, HELPED, NEUTRAL = 'tab:red', 'tab:blue', '0.6'
MAX_NAMED_TICKS = 30  # above this many classes, name only the highlighted ones
MAX_LABELLED_LINES = 20
# (array [V, S, E], its epochs [E], axis label, shown in percent)
CURVES = (('train_loss', 'curve_epochs', 'training loss', False),
          ('train_accuracy', 'curve_epochs', 'training accuracy (%)', True),
          ('test_accuracy_at_eval', 'eval_epochs', 'test accuracy (%)', True))


# -------------------------------------------------------------------------- helpers

def _x_axis(ax, sweep_name: str, sweep_values: np.ndarray) -> np.ndarray:
  """Places sweep values on the knob's natural scale; returns x positions."""
  x = np.asarray(sweep_values, np.float64)
  if knob_table.log_scale(str(sweep_name)) and np.all(x >= 0) and np.any(x > 0):
    # Log axis; a zero value (no decay) sits one decade left of the smallest positive one.
    positive = x[x > 0]
    zero_at = positive.min() / 10
    x = np.where(x > 0, x, zero_at)
    ax.set_xscale('log')
    ax.set_xticks(x)
    ax.set_xticklabels([('0' if v == 0 else f'{v:g}') for v in sweep_values], rotation=45)
    ax.minorticks_off()
  return x


def _save(fig, path: str) -> str:
  """Writes `fig` to `path` (PNG) and the same name with .pdf, each whole or not at all
  (results' atomic writes: a full disk is a one-line WriteError); closes it; returns
  `path`."""
  try:
    for name, options in ((path, dict(format='png', dpi=130)),
                          (os.path.splitext(path)[0] + '.pdf', dict(format='pdf'))):
      image = io.BytesIO()
      fig.savefig(image, bbox_inches='tight', **options)
      files.write_bytes(name, image.getvalue())
  finally:
    plt.close(fig)
  return path


def _spread(y: np.ndarray, gap: float) -> np.ndarray:
  """Label heights [k] moved apart to at least `gap`, in the original order, near the data."""
  order = np.argsort(y)
  placed = np.array(y, np.float64)[order]
  for i in range(1, len(placed)):
    placed[i] = max(placed[i], placed[i - 1] + gap)
  # Centre the shifted block on the data so labels do not all drift upwards.
  placed -= (placed - np.asarray(y)[order]).mean()
  out = np.empty_like(placed)
  out[order] = placed
  return out


def _seed_mean(per_seed: np.ndarray, results: Mapping[str, Any]) -> np.ndarray:
  """Mean over the seeds that did not diverge: [V, S, ...] -> [V, ...]."""
  per_seed = np.asarray(per_seed, np.float64)
  keep = ~np.asarray(results.get('diverged', np.zeros(per_seed.shape[:2], bool)), bool)
  return masked_seed_mean(per_seed, keep)


def _pct(x) -> np.ndarray:
  """Fractions (None allowed) -> percent, NaN for None."""
  return 100 * np.array([np.nan if v is None else v for v in x], np.float64)


def _highlighted(change: np.ndarray, significant: np.ndarray, k: int) -> tuple[list, list]:
  """The k most hurt and k most helped classes: significant ones first, then by size.

  change [V, C] (accuracy minus the reference's), significant bool [2, C] (hurt, helped).
  """
  with np.errstate(invalid='ignore'):
    drop = np.nan_to_num(np.nanmin(change, 0), nan=0.0)
    rise = np.nan_to_num(np.nanmax(change, 0), nan=0.0)
  hurt = list(np.lexsort((drop, ~significant[0]))[:k])
  hurt = [c for c in hurt if drop[c] < 0]
  rise_order = np.lexsort((-rise, ~significant[1]))
  helped = [c for c in rise_order if rise[c] > 0 and c not in hurt][:k]
  return hurt, helped


# --------------------------------------------------------------- 1. the paper's figure

def _label_line_ends(ax, x_end: float, acc: np.ndarray, chosen: list, names: list[str]) -> None:
  """Names the chosen (class, colour, starred) lines of acc [V, C] right of the axes."""
  ends = np.nan_to_num(acc[-1, [c for c, _, _ in chosen]])
  gap = 0.045 * max(np.nanmax(acc) - np.nanmin(acc), 1.0)
  for (c, color, star), y in zip(chosen, _spread(ends, gap)):
    ax.annotate(names[c] + (' *' if star else ''), xy=(x_end, np.nan_to_num(acc[-1, c])),
                xytext=(1.02, y), textcoords=('axes fraction', 'data'), fontsize=8,
                color=color, va='center', annotation_clip=False,
                arrowprops={'arrowstyle': '-', 'color': color, 'lw': 0.5})


def per_class_accuracy(results: Mapping[str, np.ndarray], path: str, top_k: int = 3,
                       analysis: Mapping[str, Any] | None = None) -> str:
  """The paper's figure: per-class test accuracy (mean over seeds) against the sweep value.

  One thin grey line per class, the `top_k` classes that lose (and gain) most against the
  reference value in colour and labelled, the mean over test images in bold. The reference
  is the analysis's when given (and classes it flags at q < alpha come first, starred),
  else the value with the best mean accuracy. Diverged models are left out.
  """
  acc = 100 * _seed_mean(results['per_class_accuracy'], results)  # [V, C]
  mean = 100 * _seed_mean(results['mean_accuracy'], results)  # [V]
  names = [str(n) for n in results['class_names']]
  sweep_name = str(results['sweep_name'])
  if analysis is not None:
    ref = analysis['reference']['index']
    flagged = [set().union(*(v[key] for v in analysis['values'])) for key in ('hurt', 'helped')]
    significant = np.array([[n in group for n in names] for group in flagged])
  else:
    ref = int(np.nanargmax(mean)) if np.any(~np.isnan(mean)) else 0
    significant = np.zeros((2, len(names)), bool)
  # Highlight a fifth of the classes at most, so that highlighting still singles out.
  hurt, helped = _highlighted(acc - acc[ref], significant, min(top_k, max(1, len(names) // 5)))

  fig, ax = plt.subplots(figsize=(8, 5))
  x = _x_axis(ax, sweep_name, results['sweep_values'])
  ax.plot(x, acc, color=NEUTRAL, lw=0.6, alpha=0.6 if acc.shape[1] <= 100 else 0.15)
  ax.plot(x, mean, color='black', lw=3, label='mean over test images')
  ax.axvline(x[ref], color='0.3', ls=':', lw=1, label='reference')
  chosen = [(c, HURT, significant[0, c]) for c in hurt] + [
      (c, HELPED, significant[1, c]) for c in helped]
  for c, color, _ in chosen:
    ax.plot(x, acc[:, c], color=color, lw=1.6, marker='o', ms=3)
  if len(names) <= MAX_LABELLED_LINES:  # few classes: name every line
    chosen += [(c, '0.35', False) for c in range(len(names)) if c not in hurt + helped]
  _label_line_ends(ax, x[-1], acc, chosen, names)
  ax.set_xlabel(sweep_name)
  ax.set_ylabel('test accuracy (%), mean over seeds')
  n_seeds = results['per_class_accuracy'].shape[1]
  note = ' (* q < 0.05)' if significant.any() else ''
  ax.set_title(f'Per-class accuracy vs {sweep_name} ({acc.shape[1]} classes, {n_seeds} seeds)'
               f'\nred: most hurt, blue: most helped vs the reference{note}', fontsize=10)
  ax.legend(loc='lower left', fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, path)


# -------------------------------------------------------- 2. per-class effects, sorted

def _effect_panel(ax, entry: Mapping[str, Any], names: list[str], top_k: int) -> None:
  """One value's class effects (points) sorted, with intervals; significant ones coloured."""
  per_class = entry['per_class']
  effect, low, high = (_pct(per_class[k]) for k in ('effect', 'low', 'high'))
  order = np.argsort(np.nan_to_num(effect), kind='stable')
  rank = np.arange(len(order))
  colors = np.where(np.isin([names[c] for c in order], entry['hurt']), HURT,
                    np.where(np.isin([names[c] for c in order], entry['helped']), HELPED, NEUTRAL))
  ax.axhline(0, color='black', lw=0.6)
  if entry.get('beyond_shift'):  # the shift shared by all classes (audit/shift.py)
    ax.axhline(100 * entry['beyond_shift']['shift']['effect'], color='0.35', ls='--', lw=0.9)
  if len(order) <= MAX_NAMED_TICKS:
    ax.errorbar(rank, effect[order], yerr=[effect[order] - low[order], high[order] - effect[order]],
                fmt='none', ecolor='0.5', lw=0.8, capsize=2)
    ax.scatter(rank, effect[order], c=colors, s=18, zorder=3)
    ax.set_xticks(rank)
    ax.set_xticklabels([names[c] for c in order], rotation=90, fontsize=7)
    return
  ax.vlines(rank, low[order], high[order], color='0.82', lw=0.4)
  ax.plot(rank, effect[order], color='0.3', lw=0.8)
  marked = colors != NEUTRAL
  ax.scatter(rank[marked], effect[order][marked], c=colors[marked], s=6, zorder=3)
  k = min(top_k, len(order) // 2)
  span = max(np.nanmax(high) - np.nanmin(low), 1.0)
  for ends, side in ((np.arange(k), 1), (np.arange(len(order) - k, len(order)), -1)):
    heights = _spread(np.nan_to_num(effect[order[ends]]), 0.07 * span)
    for i, y in zip(ends, heights - side * 0.12 * span):
      ax.annotate(names[order[i]], (rank[i], effect[order[i]]), xytext=(
          rank[i] + side * 0.08 * len(order), y), fontsize=6, color=colors[i],
                  ha='left' if side > 0 else 'right', va='center',
                  arrowprops={'arrowstyle': '-', 'color': '0.5', 'lw': 0.4})
  ax.set_xlabel('classes, sorted by effect')


def _effect_limits(entries: list[Mapping[str, Any]]) -> tuple[float, float]:
  """y-limits (points) showing every effect and most intervals; a far wider one is cut."""
  get = lambda k: np.concatenate([_pct(e['per_class'][k]) for e in entries])  # noqa: E731
  effect, low, high = get('effect'), get('low'), get('high')
  if np.all(np.isnan(effect)):
    return -1.0, 1.0
  with np.errstate(invalid='ignore'):
    lo = np.nanmin(np.r_[effect, np.nanpercentile(low, 10)])
    hi = np.nanmax(np.r_[effect, np.nanpercentile(high, 90)])
  pad = 0.08 * max(hi - lo, 1.0)
  return max(lo - pad, -100.0), min(hi + pad, 100.0)


def class_effects(analysis: Mapping[str, Any], path: str, top_k: int = 5) -> str | None:
  """Per-class effect of each sweep value against the reference, sorted, with 95% intervals.

  One panel per non-reference value; red / blue: hurt / helped at q < alpha. With more
  than MAX_NAMED_TICKS classes the intervals are a band and only the top_k at each end are
  named. The axis shows every effect and most intervals; one far wider than the rest runs
  off it. Returns None when the sweep has a single value.
  """
  ref = analysis['reference']['index']
  entries = [e for e in analysis['values'] if e['index'] != ref]
  if not entries:
    return None
  names, knob = analysis['class_names'], analysis['sweep_name']
  cols = min(3, len(entries))
  rows = -(-len(entries) // cols)
  wide = len(names) <= MAX_NAMED_TICKS
  fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, (3.8 if wide else 3.2) * rows),
                           sharey=True, squeeze=False)
  for ax, entry in zip(axes.ravel(), entries):
    _effect_panel(ax, entry, names, top_k)
    ax.set_title(f'{knob.split(".")[-1]}={entry["value"]:g}: {entry["num_hurt"]} hurt, '
                 f'{entry["num_helped"]} helped', fontsize=9)
    ax.grid(alpha=0.3, axis='y')
  for ax in axes.ravel()[len(entries):]:
    ax.axis('off')
  axes[0, 0].set_ylim(*_effect_limits(entries))  # shared by every panel
  for ax in axes[:, 0]:
    ax.set_ylabel('effect on class accuracy (points)')
  tested = analysis.get('inference', {}).get('status') != 'conditional'
  how = (f'red hurt, blue helped at q < {analysis["alpha"]:g}; dashed: the shared shift'
         if tested else
         'one seed: conditional on these runs, nothing tested')
  fig.suptitle(f'Class effects vs {knob}={analysis["reference"]["value"]:g} (95% intervals; '
               f'{how})', fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


# ------------------------------------------------------- 3. mean vs worst vs 10th pct

def summary_curves(analysis: Mapping[str, Any], path: str) -> str:
  """Mean accuracy (95% interval), 10th-percentile class and worst class against the knob."""
  values = analysis['values']
  get = lambda key: _pct([v[key] for v in values])  # noqa: E731
  fig, ax = plt.subplots(figsize=(7, 4.5))
  x = _x_axis(ax, analysis['sweep_name'], np.array(analysis['sweep_values'], np.float64))
  ax.fill_between(x, get('mean_accuracy_low'), get('mean_accuracy_high'), color='black',
                  alpha=0.12, lw=0)
  ax.plot(x, get('mean_accuracy'), color='black', lw=2.5, marker='o', label='mean')
  ax.plot(x, get('p10_class_accuracy'), color='tab:orange', lw=1.8, marker='s',
          label='10th-percentile class')
  worst = get('worst_class_accuracy')
  ax.plot(x, worst, color=HURT, lw=1.8, marker='v', label='worst class')
  if len(values) <= 10:
    for xi, yi, v in zip(x, worst, values):
      ax.annotate(v['worst_class'], (xi, yi), xytext=(0, -11), textcoords='offset points',
                  fontsize=7, color=HURT, ha='center')
  ax.axvline(x[analysis['reference']['index']], color='0.3', ls=':', lw=1, label='reference')
  ax.set_xlabel(analysis['sweep_name'])
  ax.set_ylabel('test accuracy (%), mean over seeds')
  ax.set_title('Mean accuracy vs the worst classes (worst-class values are biased low: '
               'the minimum of noisy estimates)', fontsize=9)
  ax.legend(fontsize=8, loc='best')
  ax.grid(alpha=0.3)
  return _save(fig, path)


# -------------------------------------------------------------- 4. confusion flow

def confusion_flow(analysis: Mapping[str, Any], path: str, top_k: int = 5) -> str | None:
  """Where the top_k most hurt classes' lost predictions went, at the analysis's focus value.

  One bar per hurt class: its net accuracy drop (black tick) and the classes whose share of
  its predictions grew (segments, named). Returns None when no class is hurt there.
  """
  focus = analysis['focus_index']
  flows = [] if focus is None else analysis['values'][focus]['confusion_flow'][:top_k]
  if not flows:
    return None
  entry = analysis['values'][focus]
  palette = plt.get_cmap('tab20').colors
  fig, ax = plt.subplots(figsize=(8, 0.7 * len(flows) + 1.6))
  for row, flow in enumerate(flows):
    left = 0.0
    for j, receiver in enumerate(flow['to']):
      width = 100 * receiver['fraction']
      ax.barh(row, width, left=left, color=palette[(2 * j) % len(palette)], edgecolor='white')
      if width >= 4:
        ax.text(left + width / 2, row, f'{receiver["class"]}\n{width:.0f}', ha='center',
                va='center', fontsize=7)
      left += width
    ax.plot([100 * flow['lost']] * 2, [row - 0.42, row + 0.42], color='black', lw=2)
  ax.set_yticks(range(len(flows)))
  ax.set_yticklabels([f'{f["class"]} (-{100 * f["lost"]:.1f})' for f in flows], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel('share of the class\'s test images (points): segments = classes that gained '
                'predictions, tick = net accuracy lost', fontsize=8)
  ref = analysis['reference']['value']
  ax.set_title(f'Where the most hurt classes\' predictions went: '
               f'{analysis["sweep_name"]}={entry["value"]:g} vs {ref:g}', fontsize=10)
  ax.grid(alpha=0.3, axis='x')
  return _save(fig, path)


# ------------------------------------------------------------- 5. training curves

def training_curves(results: Mapping[str, np.ndarray], path: str) -> str | None:
  """Training loss / accuracy and test accuracy per epoch, mean over seeds, one line per value.

  Reads whichever of train_loss, train_accuracy (against `curve_epochs`) and
  test_accuracy_at_eval (against `eval_epochs`), all [V, S, E], the results hold; returns
  None when they hold none.
  """
  present = [c for c in CURVES if c[0] in results and c[1] in results]
  if not present:
    return None
  values = np.asarray(results['sweep_values'], np.float64)
  colors = plt.get_cmap('viridis')(np.linspace(0, 0.9, len(values)))
  fig, axes = plt.subplots(1, len(present), figsize=(4.3 * len(present), 3.6), squeeze=False)
  for ax, (key, epochs_key, label, percent) in zip(axes[0], present):
    curve = _seed_mean(results[key], results) * (100 if percent else 1)  # [V, E]
    for v, color in enumerate(colors):
      ax.plot(np.asarray(results[epochs_key]), curve[v], color=color, lw=1.4, marker='.',
              ms=3, label=f'{values[v]:g}')
    ax.set_xlabel('epoch')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0, 0].legend(title=str(results['sweep_name']).split('.')[-1], fontsize=7,
                    title_fontsize=7)
  fig.suptitle('Training curves (mean over seeds)', fontsize=10)
  fig.tight_layout()
  return _save(fig, path)
