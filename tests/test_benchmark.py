"""The benchmark CLI on a tiny model: one JSON record with positive numbers."""
import json
import os
import subprocess
import sys

import pytest

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


def test_benchmark_times_the_sequential_strategy(tmp_path):
  """'sequential' compiles the one-model program; the record costs all M models."""
  record, _ = benchmark('--models=2', '--strategy=sequential', '--compare-sequential',
                        tmp_path=tmp_path)
  one, _ = benchmark('--models=1', '--strategy=unroll', tmp_path=tmp_path)
  assert record['strategy'] == 'sequential' and record['loop'] == 'python'
  assert record['xla_flops_per_step'] == pytest.approx(2 * one['xla_flops_per_step'], rel=0.01)
  assert record['flops_per_step'] == 2 * one['flops_per_step']
  assert record['sequential_ratio'] > 0


def test_benchmark_reports_the_rule_choice(tmp_path):
  """The default strategy is the rule, resolved without measuring; a scanned call of 4
  steps is timed and costed per step."""
  record, _ = benchmark('--models=1', '--augment=off', '--loop=scan', tmp_path=tmp_path)
  assert record['requested_strategy'] == 'rule' and record['strategy'] == 'unroll'
  assert record['augment'] == 'off' and record['loop'] == 'scan'
  assert record['step_s'] > 0 and record['flops_per_step'] > 0
  assert not os.listdir(tmp_path)  # nothing measured, nothing cached


def test_benchmark_compare_augment_reports_its_share_of_the_step(tmp_path):
  """--augment=study turns every study augmentation on; --compare-augment times the same
  step without them in the same run."""
  record, stdout = benchmark('--models=1', '--strategy=unroll', '--augment=study',
                             '--compare-augment', tmp_path=tmp_path)
  assert record['augment'] == 'study'
  assert record['augment_step_s'] == record['step_s'] and record['no_augment_step_s'] > 0
  assert record['augment_overhead'] == pytest.approx(
      1 - record['no_augment_step_s'] / record['augment_step_s'])
  assert record['augment_overhead'] < 1
  assert 0 < record['augment_alone_share'] < 1
  assert 'all of the above at once' in stdout


def test_valid_taps_leave_out_padding():
  from classbias_jax.tuning.flops import _valid_taps
  assert _valid_taps(4, 4, 3, 1, 1, 1, 1) == 10  # 'SAME': each edge output loses a tap
  assert _valid_taps(4, 2, 3, 2, 0, 1, 1) == 5  # stride 2, padded only at the end
  assert _valid_taps(5, 3, 3, 1, 0, 1, 1) == 9  # 'VALID': every tap reads the input


def test_model_flops_agree_with_xla_cost_analysis_on_cpu():
  """3x the forward pass's conv and matmul FLOPs is within 10% of XLA's count of the whole
  compiled training step (which adds the elementwise work) on CPU, where XLA counts
  convolutions too."""
  import jax
  from classbias_jax import benchmark as bench
  from classbias_jax.models import create_model
  from classbias_jax.tuning import prepared
  args = bench.parse_args(['--model=resnet8', '--models=2', '--batch=8', '--augment=off'])
  step = prepared.prepared_step(create_model('resnet8', 10), bench.study_config(args),
                                image_shape=(16, 16, 3), num_classes=10, strategy='unroll')
  assert jax.default_backend() == 'cpu' and step.xla_flops > 0
  assert 0.9 < step.flops / step.xla_flops < 1.1


GPU_HLO = """HloModule jit_step
%fused_add (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(f32[4]{0} %p0, f32[4]{0} %p0)
}
ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %cudnn-conv.7 = (f32[4]{0}, u8[0]{0}) custom-call(f32[4]{0} %x), custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(step)/transpose(jvp(ResNet))/Conv_0/conv_general_dilated"}
  ROOT %loop_add_fusion = f32[4]{0} fusion(f32[4]{0} %x), kind=kLoop, calls=%fused_add
}
"""


def test_gpu_trace_is_summarised_from_its_kernels_alone():
  """A GPU trace: kernels matched to the program's ops by their hlo_op argument, cuDNN
  custom calls counted as convolutions, host events not counted again."""
  from classbias_jax.tuning.profile import hlo_instructions, summarize_trace
  info = hlo_instructions(GPU_HLO)
  assert info['cudnn-conv.7']['category'] == 'convolution (cuDNN)'
  assert info['loop_add_fusion']['category'] == 'elementwise'
  events = [
      {'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/host:CPU'}},
      {'ph': 'M', 'name': 'process_name', 'pid': 2, 'args': {'name': '/device:GPU:0'}},
      {'ph': 'X', 'pid': 1, 'name': 'cudnn-conv.7', 'dur': 9000},  # host side: not counted
      {'ph': 'X', 'pid': 2, 'name': 'sm90_xmma_wgrad', 'dur': 3000,
       'args': {'hlo_op': 'cudnn-conv.7'}},
      {'ph': 'X', 'pid': 2, 'name': 'loop_add_fusion', 'dur': 1000},
      {'ph': 'X', 'pid': 2, 'name': 'some_memcpy_kernel', 'dur': 500},
  ]
  out = summarize_trace(events, info, steps=2, wall=0.004)
  assert out['category_ms'] == {'convolution (cuDNN)': 1.5, 'elementwise': 0.5,
                                'kernels not matched to an op': 0.25}
  assert out['device_busy_ms_per_step'] == 2.25 and out['wall_ms_per_step'] == 2.0
  assert out['top_ops'][0]['name'] == 'cudnn-conv.7'
  assert out['top_unmatched'] == [('some_memcpy_kernel', 0.25)]
