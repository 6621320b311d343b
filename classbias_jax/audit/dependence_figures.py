"""Class-dependence figures: the spread between classes against the knob, beside mean accuracy,
and the gallery of images turned from right to wrong in the classes hurt beyond the shift.

Matplotlib on analysis dicts (dependence.py's keys) and uint8 images; no training imports.
Each figure is written as PNG and PDF by figures.py's writer; only classes the report names are
labelled, so the figures stay legible at C = 1000.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from classbias_jax.audit import figures
from classbias_jax.audit.figures import HURT, plt

GALLERY_CLASSES = 5  # rows of the gallery (the most hurt beyond the shift)
GALLERY_COLUMNS = 6


def _get(entries, key: str, field: str) -> np.ndarray:
  """[V] percent of entries[v][key][field], NaN where absent."""
  return figures._pct([(e.get(key) or {}).get(field) for e in entries])


def class_dependence(analysis: Mapping[str, Any], path: str) -> str | None:
  """Mean accuracy (95% interval) and the between-class spread tau (95% interval, points)
  against the knob, side by side; the shared shift beside tau. None when nothing was
  compared (one value) or tau is unknown everywhere (one seed)."""
  values = analysis['values']
  tau = _get(values, 'class_dependence', 'tau')
  if np.all(np.isnan(tau)):
    return None
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  sweep = np.array(analysis['sweep_values'], np.float64)
  ref = analysis['reference']['index']
  for ax in (left, right):
    x = figures._x_axis(ax, analysis['sweep_name'], sweep)
    ax.axvline(x[ref], color='0.3', ls=':', lw=1, label='reference')
    ax.set_xlabel(analysis['sweep_name'])
    ax.grid(alpha=0.3)
  mean = figures._pct([v['mean_accuracy'] for v in values])
  left.fill_between(x, figures._pct([v['mean_accuracy_low'] for v in values]),
                    figures._pct([v['mean_accuracy_high'] for v in values]), color='black',
                    alpha=0.12, lw=0)
  left.plot(x, mean, color='black', lw=2.5, marker='o', label='mean accuracy')
  left.set_ylabel('test accuracy (%), mean over seeds')
  low, high = _get(values, 'class_dependence', 'low'), _get(values, 'class_dependence', 'high')
  right.errorbar(x, tau, yerr=[tau - low, high - tau], color=HURT, marker='o', lw=2,
                 capsize=3, label='spread between classes (tau)')
  shift = np.array([np.nan if v.get('beyond_shift') is None else 100 * v['beyond_shift'][
      'shift']['effect'] for v in values])
  right.plot(x, np.abs(shift), color='0.45', ls='--', marker='s', ms=4,
             label='|shared shift|')
  right.set_ylim(bottom=0)
  right.set_ylabel(f'points, against {analysis["reference"]["value"]:g}')
  right.legend(fontsize=8)
  left.legend(fontsize=8)
  fig.suptitle('How class dependent the knob is: mean accuracy (left) and the standard '
               'deviation of the true class effects beyond the shared shift (right)', fontsize=9)
  fig.tight_layout()
  return figures._save(fig, path)


def gallery_index(analysis: Mapping[str, Any]) -> int | None:
  """The value with the most classes hurt beyond the shift (ties: larger tau), or None."""
  entries = [v for v in analysis['values'] if v.get('flipped_images')]
  if not entries:
    return None
  return max(entries, key=lambda v: (len(v['beyond_shift']['hurt']),
                                     v['class_dependence']['tau'] or 0))['index']


def gallery_indices(analysis: Mapping[str, Any]) -> list[int]:
  """Test-image indices the gallery shows (the reader fetches these images)."""
  v = gallery_index(analysis)
  if v is None:
    return []
  return [im['index'] for row in analysis['values'][v]['flipped_images'][:GALLERY_CLASSES]
          for im in row['images'][:GALLERY_COLUMNS]]


def _show(ax, image: np.ndarray) -> None:
  grey = image.ndim == 2 or image.shape[-1] == 1
  ax.imshow(image[..., 0] if grey and image.ndim == 3 else image, cmap='gray' if grey else None,
            interpolation='nearest')


def flipped_images(analysis: Mapping[str, Any], images: Mapping[int, np.ndarray],
                   path: str) -> str | None:
  """For each class hurt beyond the shift at gallery_index's value (the most hurt first, up
  to GALLERY_CLASSES), the test images most often turned right -> wrong across seeds,
  each captioned with how many seeds flipped it and where its prediction went. images:
  {test index: uint8 [H, W, C]}. None when no class is hurt beyond the shift."""
  v = gallery_index(analysis)
  if v is None or not images:
    return None
  entry = analysis['values'][v]
  rows = entry['flipped_images'][:GALLERY_CLASSES]
  seeds = entry['num_seeds']
  fig, axes = plt.subplots(len(rows), GALLERY_COLUMNS, figsize=(1.7 * GALLERY_COLUMNS,
                                                                1.9 * len(rows)), squeeze=False)
  for axes_row, row in zip(axes, rows):
    for ax, im in zip(axes_row, row['images'] + [None] * GALLERY_COLUMNS):
      ax.set_xticks([])
      ax.set_yticks([])
      if im is None or im['index'] not in images:
        ax.axis('off')
        continue
      _show(ax, images[im['index']])
      ax.set_title(f'{im["seeds"]}/{seeds} -> {im["to"]}', fontsize=7)
    axes_row[0].set_ylabel(row['class'], fontsize=8, color=HURT)
  knob = analysis['sweep_name']
  fig.suptitle(f'Test images most often turned right -> wrong, {knob}={entry["value"]:g} vs '
               f'{analysis["reference"]["value"]:g} (seeds that flipped it -> predicted class)',
               fontsize=9)
  fig.tight_layout()
  return figures._save(fig, path)
