"""Benchmark CLI: throughput of the compiled training step for a model, batch, M, strategy.

  python -m classbias_jax.benchmark --model=resnet20 --batch=128 --models=8 --strategy=auto \\
      --compare-sequential --torch

Times the step that train.run compiles (train.make_train_step: pad-4 crop + flip
augmentation on device as in a study, forward, backward, SGD update of all M models) on
random images after warm-up, and prints, as its last line, one JSON object: model, batch,
models, strategy (resolved), backend, device_kind, compile_s, step_s (median),
images_per_s (all models), images_per_s_per_model, flops_per_step (XLA cost analysis),
achieved_tflops, matmul_peak_tflops (a large f32 matmul, bf16 on GPU/TPU, measured in the
same process) and fraction_of_peak.

--compare-sequential also times the M models one after another (the M = 1 program called
M times); --torch times benchmarks/torch_resnet.py (the same architecture trained eagerly
by PyTorch with SGD, same threads; needs torch). Both are interleaved with the main
measurement, round by round, so a busy machine slows all of them alike; the ratios are
reported as sequential_ratio (> 1: the M-model program is faster than M runs) and
torch_ratio (our images/s over PyTorch's, both for the whole sweep).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m classbias_jax.benchmark',
                              description='Throughput of the compiled training step.')
  p.add_argument('--model', default='resnet20')
  p.add_argument('--batch', type=int, default=128, help='images per model per step')
  p.add_argument('--models', type=int, default=8, help='M, models trained together')
  p.add_argument('--strategy', default='auto', help='auto, unroll, vmap, chunked, shard[:inner]')
  p.add_argument('--chunk-size', type=int, default=4, help="models per chunk for 'chunked'")
  p.add_argument('--augment', choices=('on', 'off'), default='on',
                 help='pad-4 crop + flip as in a study (off: to measure their cost)')
  p.add_argument('--image-size', type=int, default=32)
  p.add_argument('--num-classes', type=int, default=10)
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  p.add_argument('--steps', type=int, default=10, help='timed steps (after warm-up)')
  p.add_argument('--rounds', type=int, default=3,
                 help='the timed steps are split into this many interleaved rounds')
  p.add_argument('--compare-sequential', action='store_true')
  p.add_argument('--torch', action='store_true', help='also time the PyTorch reference')
  p.add_argument('--host-devices', type=int, default=0,
                 help='CPU only: split the host into this many XLA devices (for shard)')
  return p.parse_args(argv)


def study_config(args):
  """A study config for the benchmark: M = 1 sweep value x `models` seeds."""
  from classbias_jax import configs
  c = configs.base_config()
  c.model.name, c.model.dtype = args.model, args.dtype
  c.seeds = args.models
  c.sweep['values'] = (5e-4,)
  c.train.batch_size = args.batch
  c.train.strategy = args.strategy
  c.train.chunk_size = args.chunk_size
  c.aug.pad_crop = 4 if args.augment == 'on' else 0
  c.aug.flip = args.augment == 'on'
  c.data.name = 'benchmark'  # only for the record: the images are random
  return c


def matmul_peak_tflops(backend: str, calls: int = 10) -> float:
  """Best TFLOP/s of a square matmul: f32 2048^2 on CPU, bf16 8192^2 elsewhere."""
  import jax
  import jax.numpy as jnp
  from classbias_jax import parallel
  n, dtype = (2048, jnp.float32) if backend == 'cpu' else (8192, jnp.bfloat16)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  run = lambda: matmul(a, b).block_until_ready()
  run()
  return 2 * n ** 3 / min(parallel.time_calls(run, calls)) / 1e12


def torch_step(args, threads: int):
  """run_step() of the PyTorch reference, or None when torch is not importable."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return None
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(root, 'benchmarks'))
  import torch_resnet
  step, images, labels = torch_resnet.setup(args.model, args.batch, args.image_size,
                                            num_classes=args.num_classes, threads=threads,
                                            augment_on=args.augment == 'on')
  return lambda: step(images, labels).item()


def interleaved(runners: dict, steps: int, rounds: int) -> dict[str, list[float]]:
  """Seconds per call of each runner: `rounds` rounds, each running every runner for
  steps / rounds calls in turn, so load on a shared machine hits them alike."""
  from classbias_jax import parallel
  per_round = max(1, steps // rounds)
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      times[name] += parallel.time_calls(run, per_round)
  return times


def benchmark(args) -> dict:
  """Runs the measurements of `args` and returns the JSON record."""
  import jax
  from classbias_jax import parallel, train
  from classbias_jax.models import create_model
  import jax.numpy as jnp

  config = study_config(args)
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32
  model = create_model(args.model, args.num_classes, 1.0, dtype)
  image_shape = (args.image_size, args.image_size, 3)
  shape_args = dict(image_shape=image_shape, num_classes=args.num_classes)
  strategy = train.choose_strategy(config, model, **shape_args)
  run_step, compile_s, flops = train.prepared_step(model, config, strategy=strategy,
                                                   **shape_args)
  runners = {'sweep': run_step}
  if args.compare_sequential:
    one = study_config(argparse.Namespace(**{**vars(args), 'models': 1}))
    run_one, _, _ = train.prepared_step(model, one, strategy='unroll', **shape_args)
    runners['sequential'] = lambda: [run_one() for _ in range(args.models)]
  threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  if args.torch:
    run_torch = torch_step(args, threads)
    if run_torch is None:
      print('torch is not importable: skipping the PyTorch reference', file=sys.stderr)
    else:
      runners['torch'] = run_torch
  for run in runners.values():  # warm-up: first calls allocate and fill caches
    run(), run()
  times = interleaved(runners, args.steps, args.rounds)
  step_s = parallel.median(times['sweep'])
  backend = jax.default_backend()
  peak = matmul_peak_tflops(backend)
  images = args.batch * args.models
  record = {
      'model': args.model, 'batch': args.batch, 'models': args.models, 'strategy': strategy,
      'requested_strategy': args.strategy, 'augment': args.augment, 'dtype': args.dtype,
      'image_size': args.image_size, 'backend': backend,
      'device_kind': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'cpu': parallel.cpu_model(), 'threads': threads, 'jax': jax.__version__,
      'compile_s': compile_s, 'step_s': step_s, 'images_per_s': images / step_s,
      'images_per_s_per_model': args.batch / step_s, 'flops_per_step': flops,
      'achieved_tflops': flops / step_s / 1e12, 'matmul_peak_tflops': peak,
      'fraction_of_peak': flops / step_s / 1e12 / peak,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  if 'sequential' in times:
    record['sequential_step_s'] = parallel.median(times['sequential'])
    record['sequential_ratio'] = record['sequential_step_s'] / step_s
  if 'torch' in times:
    torch_s = parallel.median(times['torch'])
    record['torch_images_per_s'] = args.batch / torch_s
    record['torch_ratio'] = record['images_per_s'] / record['torch_images_per_s']
  return record


def summary(r: dict) -> str:
  lines = [f"{r['model']} batch {r['batch']} x {r['models']} models, strategy {r['strategy']} "
           f"on {r['backend']} ({r['device_kind']}): {1e3 * r['step_s']:.1f} ms/step, "
           f"{r['images_per_s']:.0f} images/s ({r['images_per_s_per_model']:.0f} per model), "
           f"{r['achieved_tflops'] * 1e3:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of "
           f"matmul peak {r['matmul_peak_tflops'] * 1e3:.0f} GFLOP/s; compile {r['compile_s']:.1f} s"]
  if 'sequential_ratio' in r:
    lines.append(f"vs {r['models']} models one after another: {r['sequential_ratio']:.2f}x")
  if 'torch_ratio' in r:
    lines.append(f"vs PyTorch eager ({r['torch_images_per_s']:.0f} images/s, "
                 f"{r['threads']} threads): {r['torch_ratio']:.2f}x")
  return '\n'.join(lines)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.host_devices:
    # Must be set before JAX initialises its backends, hence the imports inside functions.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={args.host_devices}')
  record = benchmark(args)
  print(summary(record))
  print(json.dumps(record))


if __name__ == '__main__':
  main()
