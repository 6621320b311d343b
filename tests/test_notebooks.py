"""The notebooks: outputs stripped, and each runs top to bottom on CPU in smoke mode."""
import glob
import os

import pytest
from conftest import ROOT

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOK_DIR = os.path.join(ROOT, 'notebooks')
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, '*.ipynb')))
CELL_TIMEOUT = 120  # seconds; a cold compile on a busy 2-core machine takes ~30


def _ids(paths):
  return [os.path.basename(p) for p in paths]


def test_notebooks_exist():
  assert {'quickstart.ipynb', 'reproduce_paper.ipynb'} <= set(_ids(NOTEBOOKS))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_outputs_stripped(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_in_smoke_mode(path, tmp_path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  # As papermill does: a cell after the parameter cell sends the results to tmp_path.
  params = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1, 'one cell tagged "parameters"'
  nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(f'WORKDIR = {str(tmp_path)!r}'))
  monkeypatch.setenv('CLASSBIAS_SMOKE', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # The kernel shares the tests' persistent compilation cache.
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', os.path.join(ROOT, '.jax_cache'))
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, startup_timeout=60,
                                   kernel_name='python3',
                                   resources={'metadata': {'path': NOTEBOOK_DIR}})
  client.execute()  # raises CellExecutionError, naming the cell, on any error
  assert glob.glob(os.path.join(tmp_path, '**', 'report.md'), recursive=True)
