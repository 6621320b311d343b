"""The report CLI and library call end to end on synthetic results, and its bad-input paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from classbias_jax.audit import figures as plots
from classbias_jax.audit import formats
from classbias_jax import report
from classbias_jax import results
from test_analysis import make_results, planted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ('per_class_accuracy', 'class_effects', 'summary_curves', 'class_dependence',
           'confusion_flow', 'training_curves')


def with_curves(results, epochs=3):
  """Adds training curves [V, S, E] and a diverged flag to results."""
  v, s = results['mean_accuracy'].shape
  loss = np.linspace(2.0, 0.5, epochs)[None, None] * np.ones((v, s, 1))
  results.update(curve_epochs=np.arange(1, epochs + 1), train_loss=loss.astype(np.float32),
                 train_accuracy=(1 - loss / 3).astype(np.float32),
                 eval_epochs=np.array([epochs]),
                 test_accuracy_at_eval=(1 - loss[:, :, -1:] / 2.5).astype(np.float32),
                 diverged=np.zeros((v, s), bool))
  return results


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'classbias_jax.report', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def listing(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, files in os.walk(folder) for f in files)


def test_write_produces_analysis_figures_and_report(tmp_path):
  results.save_results(str(tmp_path), with_curves(planted()))
  os.makedirs(tmp_path / 'figures')
  (tmp_path / 'figures' / 'from_training.png').write_bytes(b'kept')
  paths = report.write(str(tmp_path), reference=0.0, top_k=3, num_bootstrap=50)

  stats = json.loads((tmp_path / 'analysis.json').read_text())
  assert [v['hurt'] for v in stats['values']] == [[], ['c0']]
  assert [v['helped'] for v in stats['values']] == [[], ['c5']]
  assert len(stats['values'][1]['per_class']['q']) == 6
  for name in FIGURES:
    for ext in ('png', 'pdf'):
      assert (tmp_path / 'figures' / f'{name}.{ext}').stat().st_size > 1000
  assert (tmp_path / 'figures' / 'from_training.png').read_bytes() == b'kept'
  text = (tmp_path / 'report.md').read_text()
  linked = [line.split('(')[1].rstrip(')') for line in text.splitlines()
            if line.startswith('![')]
  assert len(linked) == len(FIGURES) and all((tmp_path / p).is_file() for p in linked)
  assert '| c0 | 90.0 | 40.0 | -50.0' in text  # the hurt table row, in percent
  assert 'c0** lost 50.0 points; predictions gained by: c3 +60.0' in text
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.tmp')]
  assert paths['report'] == str(tmp_path / 'report.md')


def test_cli_end_to_end(tmp_path):
  results.save_results(str(tmp_path), planted())
  out = run_cli(f'--workdir={tmp_path}', '--reference=0', '--top_k=2')
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == str(tmp_path / 'report.md')
  stats = json.loads((tmp_path / 'analysis.json').read_text())
  assert stats['reference']['chosen_by'] == 'given'
  assert stats['values'][1]['hurt'] == ['c0']
  assert not (tmp_path / 'figures' / 'training_curves.png').exists()  # no curves saved
  assert '## Training curves' not in (tmp_path / 'report.md').read_text()


def _write_bad(folder, kind):
  """Puts a bad results.npz (or none) in `folder`."""
  path = folder / 'results.npz'
  good = planted()
  if kind == 'truncated':
    results.save_results(str(folder), good)
    path.write_bytes(path.read_bytes()[:200])
  elif kind == 'foreign':
    np.savez(path, weights=np.zeros(3))
  elif kind == 'shapes':
    good['test_predictions'] = good['test_predictions'][:, :, :-1]
    np.savez(path, **good)
  elif kind == 'reference':
    results.save_results(str(folder), good)


@pytest.mark.parametrize('kind, args', [
    ('missing', ()), ('truncated', ()), ('foreign', ()), ('shapes', ()),
    ('reference', ('--reference=0.5',)), ('reference', ('--run_variance=seedwise',))])
def test_bad_input_one_line_error_nothing_written(tmp_path, kind, args):
  _write_bad(tmp_path, kind)
  before = listing(tmp_path)
  out = run_cli(f'--workdir={tmp_path}', *args)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
  assert listing(tmp_path) == before


def test_many_classes_figures_stay_drawable(tmp_path):
  rng = np.random.default_rng(0)
  acc = np.clip(rng.uniform(0.4, 0.95, 60) + rng.normal(0, 0.03, (3, 2, 60)), 0, 1)
  acc[2, :, :6] -= 0.35
  results.save_results(str(tmp_path), make_results(acc, images_per_class=20, binomial=True))
  report.write(str(tmp_path), top_k=4, num_bootstrap=20)
  stats = json.loads((tmp_path / 'analysis.json').read_text())
  assert set(stats['values'][2]['hurt']) <= {f'c{c}' for c in range(6)}
  assert (tmp_path / 'figures' / 'class_effects.png').is_file()


def test_first_figure_works_from_contract_arrays_alone(tmp_path):
  path = plots.per_class_accuracy(planted(), str(tmp_path / 'fig.png'), 2)
  assert path.endswith('fig.png') and (tmp_path / 'fig.pdf').is_file()
  assert plots.training_curves(planted(), str(tmp_path / 'curves.png')) is None


def test_the_reports_number_formats():
  """One formatter per kind of number for report.md and the fix section: percent, signed
  points (never '-0.0'), p-values, table cells."""
  assert formats.pct(0.1234) == '12.3' and formats.pct(0.1234, 2) == '12.34'
  assert formats.signed(-0.052) == '-5.2' and formats.signed(0.0004) == '+0.0'
  assert formats.signed(-0.0004) == '+0.0' and formats.signed(-0.0) == '+0.0'
  assert formats.prob(0.0123) == '0.012' and formats.prob(2e-5) == '2.0e-05'
  assert formats.prob(1e-20) == '< 1e-15'
  assert [formats.pct(None), formats.signed(None), formats.prob(None)] == ['n/a'] * 3
  assert formats.table(['a', 'b'], [['x|y', 1]]) == ['| a | b |', '|---|---|', '| x\\|y | 1 |']

