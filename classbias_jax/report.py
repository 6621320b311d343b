"""CLI: a run's results -> WORKDIR/analysis.json, WORKDIR/figures/*.png|pdf, WORKDIR/report.md.

  python -m classbias_jax.report --workdir=runs/wd [--reference=0] [--top_k=5]
      [--run_variance=pooled|pairwise]

Notebooks call `write(workdir, reference=None, top_k=5)`. Everything is computed and drawn
(figures into a temporary folder) before the first file lands in WORKDIR, and each file is
renamed into place, so bad input leaves WORKDIR untouched and a reader never sees half a file.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np
from absl import app
from absl import flags

from classbias_jax import cli, configs, files
from classbias_jax.audit import dependence_figures, figures
from classbias_jax.audit.analysis import analyze
from classbias_jax.errors import ResultsError, UserError, WriteError
from classbias_jax.audit.stats import RUN_VARIANCE
from classbias_jax.fix import report as fix_report
from classbias_jax.results import load_results
from classbias_jax.audit.markdown import FIGURES, render, tables  # noqa: F401  (tables: notebooks)

ANALYSIS_FILE = 'analysis.json'
REPORT_FILE = 'report.md'

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder holding results.npz.')
_REFERENCE = flags.DEFINE_float(
    'reference', None, 'Sweep value to measure effects against (default: best mean accuracy).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'Classes named per figure and table.')
_RUN_VARIANCE = flags.DEFINE_string(
    'run_variance', RUN_VARIANCE[0],
    'Each class\'s run-to-run variance: pooled over the sweep\'s values (value x seed '
    'interaction; the pair\'s own where its values vary more) or pairwise (the two values '
    'compared alone).')


def _read_config(workdir: str) -> dict[str, Any]:
  """WORKDIR/config.json as a dict, {} when absent (results saved from a notebook); a
  ResultsError when it is there but damaged, rather than a report without its context."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    raise ResultsError(f'{path} is unreadable ({e}); remove it to report without it, or '
                       'rerun the study') from None
  if not isinstance(config, dict) or not all(
      isinstance(config.get(k, {}), dict) for k in ('data', 'model', 'sweep', 'train')):
    raise ResultsError(f'{path} is not a config.json of classbias_jax.main; remove it to '
                       'report without it')
  return config


def gallery_images(results, stats, config: dict[str, Any]) -> dict[int, np.ndarray]:
  """{test index: uint8 image} of the images the gallery shows, re-read from the run's
  dataset (config.json's `data`); {} with a warning in `stats` when the dataset cannot be
  read here or its test labels are not the run's."""
  indices = dependence_figures.gallery_indices(stats)
  if not indices or not isinstance(config.get('data'), dict):
    return {}
  # The data sources import grain, and through it JAX: seconds, and only for a gallery.
  from classbias_jax import data
  try:
    images, labels = data.read_test_images(ml_collections.ConfigDict(config['data']), indices)
  except (UserError, OSError, ValueError, IndexError) as e:
    stats['warnings'].append(f'no gallery of flipped images: the dataset could not be read '
                             f'({e})')
    logging.warning(stats['warnings'][-1])
    return {}
  if not np.array_equal(labels, np.asarray(results['test_labels'])[indices]):
    stats['warnings'].append('no gallery of flipped images: the dataset\'s test labels are '
                             'not the run\'s')
    return {}
  return dict(zip(indices, images))


def draw(results, stats, folder: str, top_k: int,
         config: dict[str, Any] | None = None) -> dict[str, str]:
  """Draws every figure into `folder`; returns {key: PNG file name} for those drawn."""
  makers = {
      'per_class_accuracy': lambda p: figures.per_class_accuracy(results, p, top_k, stats),
      'class_effects': lambda p: figures.class_effects(stats, p, top_k),
      'summary_curves': lambda p: figures.summary_curves(stats, p),
      'class_dependence': lambda p: dependence_figures.class_dependence(stats, p),
      'confusion_flow': lambda p: figures.confusion_flow(stats, p, top_k),
      'flipped_images': lambda p: dependence_figures.flipped_images(
          stats, gallery_images(results, stats, config or {}), p),
      'training_curves': lambda p: figures.training_curves(results, p),
  }
  drawn = {key: make(os.path.join(folder, key + '.png')) for key, make in makers.items()}
  return {key: os.path.basename(p) for key, p in drawn.items() if p}


def write(workdir: str, reference: float | None = None, top_k: int = 5,
          num_bootstrap: int = 1000,
          run_variance: str = RUN_VARIANCE[0]) -> dict[str, str]:
  """Analyses WORKDIR/results.npz and writes analysis.json, figures/ and report.md.

  Raises UserError (nothing written) on missing or bad results, a bad reference or an
  unknown run_variance.
  Returns {'analysis': path, 'report': path, 'figures': folder}.
  """
  results = load_results(workdir)
  config = _read_config(workdir)
  named = config.get('sweep', {}).get('name')
  if named is not None and named != str(results['sweep_name']):
    raise ResultsError(f'{workdir}: config.json is a sweep of {named}, results.npz of '
                       f'{results["sweep_name"]}: they come from different studies')
  fix = str(results['sweep_name']) == configs.ARM_SWEEP  # a fix study: arms, not values
  if fix and reference is None:
    reference = fix_report.uniform_value(results)
  stats = analyze(results, reference=reference, num_bootstrap=num_bootstrap,
                  run_variance=run_variance)
  if fix:
    stats['fix'] = fix_report.summarize(results, config)
    if reference == fix_report.uniform_value(results):
      stats['reference']['chosen_by'] = 'the best uniform arm'
  figures_dir = os.path.join(workdir, FIGURES)
  arms = fix_report.section(stats['fix'], stats['class_names'], stats['values']) if fix else []
  try:
    with tempfile.TemporaryDirectory(dir=workdir, prefix='.tmp-report-') as tmp:
      figures = draw(results, stats, tmp, top_k, config)
      text = render(stats, figures, config, top_k, arms)
      os.makedirs(figures_dir, exist_ok=True)
      for name in sorted(os.listdir(tmp)):
        os.replace(os.path.join(tmp, name), os.path.join(figures_dir, name))
  except OSError as e:  # a read-only workdir, a full disk: before any file of the report
    raise WriteError(f'cannot write the report into {workdir}: {files.os_reason(e)}') from None
  analysis_path = os.path.join(workdir, ANALYSIS_FILE)
  report_path = os.path.join(workdir, REPORT_FILE)
  files.write_json(analysis_path, stats)
  files.write_bytes(report_path, text.encode())
  return {'analysis': analysis_path, 'report': report_path, 'figures': figures_dir}


def main(argv: list[str]) -> None:
  paths = cli.workdir_command(argv, _WORKDIR.value, lambda: write(
      _WORKDIR.value, _REFERENCE.value, _TOP_K.value, run_variance=_RUN_VARIANCE.value))
  print(paths['report'])


if __name__ == '__main__':
  app.run(main)
