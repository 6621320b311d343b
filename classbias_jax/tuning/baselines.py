"""What the benchmark (classbias_jax/benchmark.py) times beside the sweep's step, and the
ratios it reports: a large matmul (the device's peak), the M models one after another,
another model-axis strategy, the augmentation alone, PyTorch eager in a child process
(benchmarks/torch_resnet.py). A ratio > 1 means the sweep's step is faster.

As in benchmark.py, JAX and the package modules that load it are imported inside the
functions: the benchmark sets the host allocator and XLA_FLAGS before JAX starts.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

def matmul_peak_tflops(backend: str, calls: int = 10, size: int = 0) -> float:
  """Best TFLOP/s of a square matmul: f32 2048^2 on CPU, bf16 8192^2 elsewhere (`size`
  > 0: that side instead)."""
  import jax
  import jax.numpy as jnp
  from classbias_jax.tuning import strategy as tuning
  n, dtype = (2048, jnp.float32) if backend == 'cpu' else (8192, jnp.bfloat16)
  n = size or n
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  run = lambda: matmul(a, b).block_until_ready()
  run()
  return 2 * n ** 3 / min(tuning.time_calls(run, calls)) / 1e12


class TorchReference:
  """benchmarks/torch_resnet.py in a child process (its OpenMP threads and XLA's would
  otherwise share one process); calling it runs one PyTorch training step there.
  cpu_s accumulates the child's CPU seconds."""

  def __init__(self, args, threads: int, device: str = 'cpu'):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(root, 'benchmarks', 'torch_resnet.py'), '--serve',
         f'--model={args.model}', f'--batch={args.batch}', f'--image-size={args.image_size}',
         f'--num-classes={args.num_classes}', f'--threads={threads}', f'--augment={args.augment}',
         f'--device={device}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.cpu_s = 0.0
    self.threads = json.loads(self.proc.stdout.readline())['threads']

  def __call__(self):
    self.proc.stdin.write('1\n')
    self.proc.stdin.flush()
    self.cpu_s += json.loads(self.proc.stdout.readline())['cpu_s']

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def torch_available() -> bool:
  return importlib.util.find_spec('torch') is not None


def other_strategy(args, config, model, name: str, materialize: bool):
  """The sweep's step compiled under the model-axis strategy `name` (--compare-strategy),
  its train.loop resolved for that strategy as a run would."""
  from classbias_jax.train import model_axis
  from classbias_jax.tuning.prepared import prepared_step
  strategy = model_axis.resolve_strategy(name, args.models, args.loop)
  step = prepared_step(model, config, strategy=strategy, materialize=materialize,
                       loop=model_axis.resolve_loop(args.loop, strategy=strategy),
                       image_shape=(args.image_size, args.image_size, 3),
                       num_classes=args.num_classes, count_flops=False)
  print(f'compiled the {strategy} step of {args.models} models in {step.compile_s:.1f} s',
        file=sys.stderr, flush=True)
  return step


def compared(times: dict, prepared: dict, step_s: float) -> dict:
  """The compile time of every compared program, and for each --compare-strategy its
  step time and ratio (> 1: the sweep's strategy is faster)."""
  from classbias_jax.tuning import strategy as tuning
  out = {}
  if 'sequential' in prepared:
    out['sequential_compile_s'] = prepared['sequential'].compile_s
  strategies = {}
  for key, step in prepared.items():
    if key.startswith('strategy:'):
      other_s = tuning.median(times[key])
      strategies[key.split(':', 1)[1]] = {
          'step_s': other_s, 'compile_s': step.compile_s, 'ratio': other_s / step_s,
          'steps_per_call': step.steps_per_call}
  if strategies:
    out['compared_strategies'] = strategies
  return out


def augment_alone(config, args):
  """A call that runs only the step's augmentation (step.make_preprocess) of all M models
  on one batch, compiled on its own: its time over the step's is the augmentation's share,
  measured directly rather than as the difference of two noisy step times."""
  import jax
  import numpy as np
  from classbias_jax.train import one_model
  from classbias_jax.tuning import prepared
  plan = prepared.stand_in_plan(config, image_shape=(args.image_size, args.image_size, 3),
                                num_classes=args.num_classes, strategy='unroll',
                                loop='python', num_batches=1)
  preprocess = one_model.make_preprocess(plan)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (args.batch, args.image_size, args.image_size,
                                                3), np.uint8))
  labels = jax.device_put(rng.integers(0, args.num_classes, args.batch).astype(np.int32))
  keys = jax.random.split(jax.random.key(0), plan.num_models)
  knobs = jax.device_put(plan.knobs)
  run_all = jax.jit(jax.vmap(preprocess, in_axes=(0, None, None, 0)))
  return lambda: jax.block_until_ready(run_all(keys, images, labels, knobs))


def ratios(times: dict, cpu: dict, step_s: float, args) -> dict:
  """The comparisons that were run: > 1 means the sweep's step (as configured) is faster."""
  from classbias_jax.tuning import strategy as tuning
  out = {}
  if 'sequential' in times:
    out['sequential_step_s'] = tuning.median(times['sequential'])
    out['sequential_ratio'] = out['sequential_step_s'] / step_s
    out['sequential_cpu_ratio'] = cpu['sequential'] / cpu['sweep']
  if 'materialize_flipped' in times:
    out['materialize_ratio'] = tuning.median(times['materialize_flipped']) / step_s
  if 'whole_batch_convs' in times:
    out['conv_chunk_ratio'] = tuning.median(times['whole_batch_convs']) / step_s
    out['conv_chunk_cpu_ratio'] = cpu['whole_batch_convs'] / cpu['sweep']
  if 'augment_flipped' in times:
    # The augmentation's share of the step with it: (with - without) / with.
    on, off = ('sweep', 'augment_flipped') if args.augment != 'off' else ('augment_flipped',
                                                                           'sweep')
    with_aug, without = tuning.median(times[on]), tuning.median(times[off])
    out['augment_step_s'], out['no_augment_step_s'] = with_aug, without
    out['augment_overhead'] = (with_aug - without) / with_aug
    out['augment_cpu_overhead'] = (cpu[on] - cpu[off]) / cpu[on]
    out['augment_alone_s'] = tuning.median(times['augment_alone'])
    out['augment_alone_share'] = out['augment_alone_s'] / with_aug
  if 'torch' in times:
    out['torch_images_per_s'] = args.batch / tuning.median(times['torch'])
    out['torch_ratio'] = args.batch * args.models / step_s / out['torch_images_per_s']
    # CPU seconds per image, PyTorch's over ours: the work ratio whatever the load.
    out['torch_cpu_ratio'] = (cpu['torch'] / args.batch) / (cpu['sweep'] / (
        args.batch * args.models))
  return out
