"""The GPU scripts of benchmarks/ in their smoke mode: the same lines at tiny sizes on the
CPU, so that a run on a GPU finds them runnable (every benchmark line prints its JSON
record, every study line leaves its results, analysis and report)."""
import gzip
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

SCRIPTS = os.path.join(ROOT, 'benchmarks')


def smoke_env(out, **extra):
  cache = os.path.join(ROOT, '.jax_cache')
  path = os.pathsep.join(filter(None, (ROOT, os.environ.get('PYTHONPATH'))))
  return dict(os.environ, OUT=str(out), PYTHON=sys.executable, PYTHONPATH=path,
              JAX_COMPILATION_CACHE_DIR=cache, CLASSBIAS_COMPILE_CACHE=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5', **extra)


def run_script(name, out, *args, **extra):
  proc = subprocess.run(['bash', os.path.join(SCRIPTS, name), *args], cwd=ROOT,
                        env=smoke_env(out, **extra), capture_output=True, text=True,
                        timeout=600)
  return proc, proc.stdout + proc.stderr


def records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def write_idx_gz(path, array):
  """An IDX file (MNIST format) of a uint8 array, gzip-compressed."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, '>i4').tobytes()
  with open(path, 'wb') as f:
    f.write(gzip.compress(header + array.astype(np.uint8).tobytes()))


def tiny_fashion(directory, train=400, test=100):
  """The four Fashion-MNIST files, named as shipped, of random 28x28 images."""
  os.makedirs(directory)
  rng = np.random.default_rng(0)
  for prefix, n in (('train', train), ('t10k', test)):
    write_idx_gz(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'),
                 rng.integers(0, 256, (n, 28, 28)))
    write_idx_gz(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), np.arange(n) % 10)
  return directory


def test_device_script_smoke_runs_every_line(tmp_path):
  """gpu_sweep.sh: four benchmark records (vmap against one after another and lax.map,
  M = 16 and 64 in f32 and bf16, shrunk to 2 tiny models), the first with its op profile,
  and the Fashion-MNIST study's results, analysis and report."""
  fashion = tiny_fashion(str(tmp_path / 'fashion'))
  proc, output = run_script('gpu_sweep.sh', tmp_path / 'out', '--smoke', FASHION_DIR=fashion)
  assert proc.returncode == 0, output[-4000:]
  lines = records(tmp_path / 'out' / 'gpu_sweep.jsonl')
  assert [r['dtype'] for r in lines] == ['float32', 'bfloat16'] * 2
  for r in lines:
    assert r['backend'] == 'cpu' and r['model'] == 'tiny' and r['strategy'] == 'vmap'
    assert r['sequential_step_s'] > 0 and r['sequential_compile_s'] > 0
    mapped = r['compared_strategies']['map']
    assert mapped['step_s'] > 0 and mapped['compile_s'] > 0
    assert mapped['ratio'] == pytest.approx(mapped['step_s'] / r['step_s'])
  assert lines[0]['profile']['op_ms_per_step'] > 0 and 'profile' not in lines[1]
  if importlib.util.find_spec('torch') is not None:  # the PyTorch reference ran beside it
    assert lines[0]['torch_ratio'] > 0 and 'torch_ratio' not in lines[1]
  else:
    assert 'torch is not importable: skipping the PyTorch reference' in output
  study = tmp_path / 'out' / 'fashion_wd'
  for name in ('results.npz', 'analysis.json', 'report.md', 'config.json'):
    assert (study / name).exists(), name
  config = json.loads((study / 'config.json').read_text())
  assert json.dumps(config).count(fashion) >= 1  # the study read the files it was given
  with np.load(study / 'results.npz', allow_pickle=False) as results:
    assert results['per_class_accuracy'].shape == (4, 2, 10)  # 4 decay values x 2 seeds
    assert len(results['test_labels']) == 100


def test_device_script_without_the_data_says_so(tmp_path):
  """No Fashion-MNIST files: the study line reports it and the exit status counts it."""
  proc, output = run_script('gpu_sweep.sh', tmp_path / 'out', '--smoke',
                            FASHION_DIR=str(tmp_path / 'none'), PARTS='study')
  assert proc.returncode == 1, output[-3000:]
  assert 'no Fashion-MNIST files in' in output
  assert not (tmp_path / 'out' / 'gpu_sweep.jsonl').exists()  # PARTS=study: no benchmark


@pytest.mark.skipif(not os.environ.get('CLASSBIAS_SLOW_TESTS'),
                    reason='a minute on two cores, for the older device scripts; gpu_sweep.sh '
                    'is smoked always; CLASSBIAS_SLOW_TESTS=1')
def test_gpu_check_and_profile_smoke(tmp_path):
  """gpu_check.sh (auto's measured choice, a ResNet-18 line, the runlocal study) and
  gpu_profile.sh (three vmapped lines, the first profiled) run and leave their records."""
  proc, output = run_script('gpu_check.sh', tmp_path / 'check', '--smoke')
  assert proc.returncode == 0, output[-4000:]
  check = records(tmp_path / 'check' / 'gpu_benchmarks.jsonl')
  assert [r['requested_strategy'] for r in check] == ['auto', 'auto']
  assert 'sequential_ratio' in check[0]
  assert (tmp_path / 'check' / 'strategies.json').exists()  # auto's measurements
  assert (tmp_path / 'check' / 'runlocal' / 'report.md').exists()
  proc, output = run_script('gpu_profile.sh', tmp_path / 'profile', '--smoke')
  assert proc.returncode == 0, output[-4000:]
  profile = records(tmp_path / 'profile' / 'gpu_profile.jsonl')
  assert [r['dtype'] for r in profile] == ['float32', 'bfloat16', 'bfloat16']
  assert 'profile' in profile[0] and profile[1]['sequential_ratio'] > 0


def test_scripts_refuse_unknown_arguments(tmp_path):
  proc, output = run_script('gpu_check.sh', tmp_path, '--smok')
  assert proc.returncode == 2 and 'usage:' in output
  assert not os.listdir(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                    reason='torch is not importable (not a dependency of the package)')
def test_torch_reference_smoke():
  proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'torch_resnet.py'), '--smoke'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record['model'] == 'tiny' and record['batch'] == 8 and record['step_s'] > 0
