"""Matplotlib figures from results arrays (see results.py); no training imports."""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LOG_SCALE_KNOBS = ('weight_decay', 'learning_rate')


def _x_axis(ax, sweep_name: str, sweep_values: np.ndarray) -> np.ndarray:
  """Places sweep values on the knob's natural scale; returns x positions."""
  x = np.asarray(sweep_values, np.float64)
  if any(k in sweep_name for k in LOG_SCALE_KNOBS) and np.all(x >= 0) and np.any(x > 0):
    # Log axis; a zero value (no decay) sits one decade left of the smallest positive one.
    positive = x[x > 0]
    zero_at = positive.min() / 10
    x = np.where(x > 0, x, zero_at)
    ax.set_xscale('log')
    ax.set_xticks(x)
    ax.set_xticklabels([('0' if v == 0 else f'{v:g}') for v in sweep_values], rotation=45)
    ax.minorticks_off()
  return x


def per_class_accuracy(results: Mapping[str, np.ndarray], path: str, top_k: int = 3) -> str:
  """The paper's figure: per-class test accuracy (mean over seeds) against the sweep value.

  One thin grey line per class, the `top_k` classes that lose (and gain) most between the
  first and the best-mean sweep value in colour and labelled, the mean in bold. Writes
  `path` (PNG) and the same figure as PDF beside it; returns `path`.
  """
  acc = 100 * np.nanmean(results['per_class_accuracy'], axis=1)  # [V, C]
  mean = 100 * np.nanmean(results['mean_accuracy'], axis=1)  # [V]
  names = [str(n) for n in results['class_names']]
  sweep_name = str(results['sweep_name'])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  x = _x_axis(ax, sweep_name, results['sweep_values'])
  ax.plot(x, acc, color='0.6', lw=0.6, alpha=0.7 if acc.shape[1] <= 100 else 0.25)
  change = acc[-1] - acc[0]
  order = np.argsort(change)
  k = min(top_k, acc.shape[1] // 2)
  for idx, color in [(order[:k], 'tab:red'), (order[::-1][:k], 'tab:blue')]:
    for c in idx:
      ax.plot(x, acc[:, c], color=color, lw=1.5)
      ax.annotate(names[c], (x[-1], acc[-1, c]), xytext=(4, 0), textcoords='offset points',
                  fontsize=8, color=color, va='center')
  ax.plot(x, mean, color='black', lw=3, label='mean over classes')
  ax.set_xlabel(sweep_name)
  ax.set_ylabel('test accuracy (%), mean over seeds')
  n_seeds = results['per_class_accuracy'].shape[1]
  ax.set_title(f'Per-class accuracy vs {sweep_name} ({acc.shape[1]} classes, {n_seeds} seeds)')
  ax.legend(loc='lower left', fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=130)
  fig.savefig(os.path.splitext(path)[0] + '.pdf')
  plt.close(fig)
  return path
