"""The benchmark CLI on a tiny model: one JSON record with positive numbers."""
import json
import os
import subprocess
import sys

from conftest import ROOT

KEYS = ('model', 'batch', 'models', 'strategy', 'backend', 'device_kind', 'compile_s', 'step_s',
        'images_per_s', 'images_per_s_per_model', 'flops_per_step', 'achieved_tflops',
        'matmul_peak_tflops', 'sequential_step_s', 'sequential_ratio', 'cpu_s_per_step',
        'sequential_cpu_ratio')


def benchmark(*args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', CLASSBIAS_CACHE_DIR=str(tmp_path),
             JAX_COMPILATION_CACHE_DIR=os.path.join(ROOT, '.jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')
  proc = subprocess.run([sys.executable, '-m', 'classbias_jax.benchmark', '--model=tiny',
                         '--batch=16', '--image-size=8', '--steps=2', '--rounds=1', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_benchmark_cli_prints_a_json_record(tmp_path):
  record, stdout = benchmark('--models=2', '--strategy=unroll', '--compare-sequential',
                             tmp_path=tmp_path)
  for key in KEYS:
    assert key in record, key
  assert (record['model'], record['batch'], record['models']) == ('tiny', 16, 2)
  assert record['strategy'] == 'unroll' and record['backend'] == 'cpu'
  for key in KEYS[6:]:
    assert record[key] > 0, key
  assert record['images_per_s'] == 2 * record['images_per_s_per_model']
  assert 'one after another' in stdout


def test_benchmark_auto_reports_the_rule_choice(tmp_path):
  """conftest sets CLASSBIAS_AUTO=rule, so 'auto' resolves without measuring; a scanned
  call of 4 steps is timed and costed per step."""
  record, _ = benchmark('--models=1', '--strategy=auto', '--augment=off', '--loop=scan',
                        tmp_path=tmp_path)
  assert record['requested_strategy'] == 'auto' and record['strategy'] == 'unroll'
  assert record['augment'] == 'off' and record['loop'] == 'scan'
  assert record['step_s'] > 0 and record['flops_per_step'] > 0
  assert not os.listdir(tmp_path)  # nothing measured, nothing cached
