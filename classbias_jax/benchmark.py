"""Benchmark CLI: throughput of the compiled training step for a model, batch, M, strategy.

  python -m classbias_jax.benchmark --model=resnet20 --batch=128 --models=8 --strategy=auto \\
      --compare-sequential --torch

Times the step that trainer.run compiles (step.make_train_step: pad-4 crop + flip
augmentation on device as in a study, forward, backward, SGD update of all M models,
called as train.loop runs it; tuning/prepared.py) on random images after warm-up, and
prints, as its last line, one JSON object: model, batch, models, strategy (resolved),
backend, device_kind, compile_s, step_s (median), images_per_s (all models), images_per_s_per_model,
model_epochs_per_hour, flops_per_step (tuning/flops.py model_flops: 3x the forward pass's
convolution and matmul FLOPs, the same on every backend), xla_flops_per_step (XLA's cost
analysis of the step: on GPU it leaves out the cuDNN convolutions), achieved_tflops,
matmul_peak_tflops (a large f32 matmul, bf16 on GPU/TPU, measured in the same process),
fraction_of_peak, cpu_s_per_step (CPU seconds of all threads: the work done, whatever
share of a busy machine the process got) and load_average.

--compare-conv-chunk also times the step with whole-batch convolutions (conv_chunk_ratio).
--compare-augment also times the step without augmentation (or, for --augment=off, with
pad-4 crop + flip) and reports augment_overhead, the augmentation's share of the
augmented step, and augment_alone_share, the same measured directly (the augmentation
compiled and timed on its own, over the step); --augment=crop, color, erase or study
sets a study's augmentation.
--compare-sequential also times the M models one after another (the M = 1 program called
M times); --torch times benchmarks/torch_resnet.py (the same architecture trained eagerly
by PyTorch with SGD, same threads; needs torch). Both are interleaved with the main
measurement, round by round, so a busy machine slows all of them alike; the ratios are
reported as sequential_ratio (> 1: the M-model program is faster than M runs) and
torch_ratio (our images/s over PyTorch's, both for the whole sweep), each also by CPU
time (*_cpu_ratio), with sequential_compile_s. --compare-strategy=NAME (repeatable) also
times the sweep's step under another model-axis strategy (e.g. map: `lax.map` over the
models in one program), interleaved too: compared_strategies[NAME] = {step_s, compile_s,
ratio (> 1: the sweep's strategy is faster), steps_per_call}.
--profile=N adds an op-level profile: where the step's time goes.
The comparisons' programs and ratios are in tuning/baselines.py.

JAX, and every module of the package that loads it, is imported inside the functions that
use it: `main` first sets the host allocator (hostmem.setup may execute the process again)
and XLA_FLAGS (--host-devices), both of which must precede JAX's start.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from classbias_jax.tuning import baselines


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m classbias_jax.benchmark',
                              description='Throughput of the compiled training step.')
  p.add_argument('--model', default='resnet20')
  p.add_argument('--batch', type=int, default=128, help='images per model per step')
  p.add_argument('--models', type=int, default=8, help='M, models trained together')
  p.add_argument('--strategy', default='rule',
                 help="rule (the studies' default), auto (measured), unroll, vmap, chunked, "
                 'sequential, shard[:inner]')
  p.add_argument('--chunk-size', type=int, default=4, help="models per chunk for 'chunked'")
  p.add_argument('--augment', choices=tuple(AUGMENTATIONS), default='on',
                 help='; '.join(f'{k}: {v}' for k, v in AUGMENTATIONS.items()))
  p.add_argument('--image-size', type=int, default=32)
  p.add_argument('--num-classes', type=int, default=10)
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  p.add_argument('--loop', choices=('auto', 'python', 'scan'), default='auto',
                 help="as train.loop: a compiled call per step ('python', auto on CPU) or "
                 "a lax.scan over 4 steps per call ('scan', auto elsewhere)")
  p.add_argument('--steps', type=int, default=10, help='timed calls (after warm-up)')
  p.add_argument('--epoch-images', type=int, default=50000,
                 help='training images per epoch, for model_epochs_per_hour (CIFAR: 50000)')
  p.add_argument('--rounds', type=int, default=3,
                 help='the timed steps are split into this many interleaved rounds')
  p.add_argument('--compare-sequential', action='store_true')
  p.add_argument('--compare-strategy', action='append', default=[], metavar='STRATEGY',
                 help='also time the step under this model-axis strategy (repeatable; e.g. '
                 'map: lax.map over the models), each with its own train.loop resolution')
  p.add_argument('--torch', action='store_true', help='also time the PyTorch reference')
  p.add_argument('--host-devices', type=int, default=0,
                 help='CPU only: split the host into this many XLA devices (for shard)')
  p.add_argument('--materialize', choices=('auto', 'on', 'off'), default='auto',
                 help="the convolutions' weight-gradient operands computed once "
                 "(the CPU model's materialized operands); auto: on CPU")
  p.add_argument('--malloc', choices=('hugepages', 'retain', 'system'), default=None,
                 help='host allocator on CPU (tuning/hostmem.py): hugepages (default, or '
                 '$CLASSBIAS_MALLOC): transparent huge pages for large blocks; retain: '
                 'freed memory stays in the process; system: the C library defaults')
  p.add_argument('--compare-materialize', action='store_true',
                 help='also time the step with the opposite --materialize setting')
  p.add_argument('--compare-conv-chunk', action='store_true',
                 help='also time the step with whole-batch convolutions (conv_batch_chunk=0; '
                 'on CPU the ResNets run in chunks of 32 images by default, models/)')
  p.add_argument('--compare-augment', action='store_true',
                 help='also time the step with the opposite --augment setting (its cost)')
  p.add_argument('--matmul-size', type=int, default=0, metavar='N',
                 help='side of the square matmul that measures the peak (0: 2048 on CPU, '
                 '8192 on GPU/TPU)')
  p.add_argument('--profile', type=int, default=0, metavar='STEPS',
                 help='trace this many steps and report where the time goes, by op')
  return p.parse_args(argv)


# --augment: what each setting turns on (each study's augmentation at its strongest).
AUGMENTATIONS = {
    'on': 'pad-4 crop + flip (the CIFAR recipe)',
    'off': 'none',
    'crop': 'RandomResizedCrop(scale 0.08-1) + flip (configs/crop.py at its smallest scale)',
    'color': 'pad-4 crop + flip + ColorJitter(0.8, 0.8, 0.8, 0.2) in random order '
             '(configs/color.py at s=1)',
    'erase': 'pad-4 crop + flip + RandomErasing(p=0.5) (configs/erase.py)',
    'study': 'all of the above at once: RandomResizedCrop(0.08), flip, ColorJitter(s=1), '
             'RandomErasing(p=0.5)',
}


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
  c.train.loop = args.loop
  a = args.augment
  c.aug.pad_crop = 4 if a in ('on', 'color', 'erase') else 0
  c.aug.flip_prob = 0.0 if a == 'off' else 0.5
  if a in ('crop', 'study'):
    c.aug.crop_scale_min = 0.08
  if a in ('color', 'study'):
    c.aug.color_strength = 1.0
  if a in ('erase', 'study'):
    c.aug.erase_prob = 0.5
  c.data.name = 'benchmark'  # only for the record: the images are random
  return c


def interleaved(runners: dict, steps: int, rounds: int) -> tuple[dict, dict]:
  """Wall seconds of each call of each runner, and the process's CPU seconds per call:
  `rounds` rounds, each running every runner for steps / rounds calls in turn, so load on
  a shared machine hits them alike. CPU seconds (all threads) measure the work done
  whatever share of the cores the process got."""
  import time
  from classbias_jax.tuning import strategy as tuning
  per_round = max(1, steps // rounds)
  times = {name: [] for name in runners}
  cpu = {name: 0.0 for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.process_time() + getattr(run, 'cpu_s', 0.0)  # a child process's own
      times[name] += tuning.time_calls(run, per_round)
      cpu[name] += time.process_time() + getattr(run, 'cpu_s', 0.0) - start
  return times, {name: c / (per_round * rounds) for name, c in cpu.items()}


def benchmark(args) -> dict:
  """Runs the measurements of `args` and returns the JSON record."""
  import jax
  from classbias_jax.tuning import hostmem, strategy as tuning
  step, runners, resolved, prepared = prepare(args)
  for run in runners.values():  # warm-up: first calls allocate and fill caches
    run(), run()
  times, cpu = interleaved(runners, args.steps, args.rounds)
  if 'torch' in runners:
    runners['torch'].close()
  # Seconds per training step of every runner (a 'scan' call runs several).
  per_call = {k: prepared[k].steps_per_call if k in prepared else
              1 if k in ('torch', 'augment_alone') else step.steps_per_call for k in runners}
  times = {k: [t / per_call[k] for t in v] for k, v in times.items()}
  cpu = {k: c / per_call[k] for k, c in cpu.items()}
  step_s = tuning.median(times['sweep'])
  backend = jax.default_backend()
  peak = baselines.matmul_peak_tflops(backend, size=args.matmul_size)
  images = args.batch * args.models
  record = {
      'model': args.model, 'batch': args.batch, 'models': args.models, **resolved,
      'requested_strategy': args.strategy, 'augment': args.augment, 'dtype': args.dtype,
      'image_size': args.image_size, 'backend': backend,
      'device_kind': jax.devices()[0].device_kind, 'devices': jax.device_count(),
      'cpu': tuning.cpu_model(), 'jax': jax.__version__,
      'compile_s': step.compile_s, 'step_s': step_s, 'images_per_s': images / step_s,
      'images_per_s_per_model': args.batch / step_s, 'flops_per_step': step.flops,
      'xla_flops_per_step': step.xla_flops,
      'model_epochs_per_hour': 3600 * images / step_s / args.epoch_images,
      'achieved_tflops': step.flops / step_s / 1e12, 'matmul_peak_tflops': peak,
      'fraction_of_peak': step.flops / step_s / 1e12 / peak,
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'malloc': hostmem.in_effect(),
      'cpu_s_per_step': cpu['sweep'],
      'load_average': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
      **baselines.ratios(times, cpu, step_s, args),
      **baselines.compared(times, prepared, step_s),
  }
  if args.profile:
    from classbias_jax.tuning import profile
    record['profile'] = profile.op_profile(step, args.profile)
  return record


def prepare(args):
  """(the sweep's PreparedStep, runners by name, resolved settings for the record, the
  PreparedStep of each runner that has one besides the sweep's, by runner name)."""
  import jax
  import jax.numpy as jnp
  from classbias_jax.train import model_axis
  from classbias_jax.models import create_model
  from classbias_jax.tuning.prepared import prepared_step
  from classbias_jax.tuning import strategy as tuning
  config = study_config(args)
  dtype = jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32
  model = create_model(args.model, args.num_classes, 1.0, dtype)
  shape_args = dict(image_shape=(args.image_size, args.image_size, 3),
                    num_classes=args.num_classes)
  strategy = (tuning.choose(config, model, **shape_args) if args.strategy == 'auto' else
              model_axis.resolve_strategy(args.strategy, args.models, args.loop))
  own = model.materializes() if hasattr(model, 'materializes') else False
  materialize = {'auto': own, 'on': True, 'off': False}[args.materialize]
  loop = model_axis.resolve_loop(args.loop, strategy=strategy)
  prepared = lambda config, strategy, materialize, model=model: prepared_step(
      model, config, strategy=strategy, materialize=materialize, loop=loop, **shape_args)
  step = prepared(config, strategy, materialize)
  print(f'compiled the {strategy} step of {args.models} models in {step.compile_s:.1f} s',
        file=sys.stderr, flush=True)
  runners, others = {'sweep': step.run}, {}
  if args.compare_materialize:
    runners['materialize_flipped'] = prepared(config, strategy, not materialize).run
  if args.compare_conv_chunk and hasattr(model, 'conv_batch_chunk'):  # the CPU model's
    runners['whole_batch_convs'] = prepared(config, strategy, materialize,
                                            model.clone(conv_batch_chunk=0)).run
  if args.compare_augment:
    flipped = argparse.Namespace(**{**vars(args),
                                    'augment': 'on' if args.augment == 'off' else 'off'})
    runners['augment_flipped'] = prepared(study_config(flipped), strategy, materialize).run
    runners['augment_alone'] = baselines.augment_alone(
        study_config(args) if args.augment != 'off' else study_config(flipped), args)
  if args.compare_sequential:
    one = prepared(study_config(argparse.Namespace(**{**vars(args), 'models': 1})), 'unroll',
                   materialize)
    runners['sequential'] = lambda: [one.run() for _ in range(args.models)]
    others['sequential'] = one
  for name in args.compare_strategy:
    others['strategy:' + name] = baselines.other_strategy(args, config, model, name,
                                                          materialize)
    runners['strategy:' + name] = others['strategy:' + name].run
  threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  if args.torch and args.augment not in ('on', 'off'):
    print(f'the PyTorch reference has no --augment={args.augment}: skipping it',
          file=sys.stderr)
  elif args.torch and not baselines.torch_available():
    print('torch is not importable: skipping the PyTorch reference', file=sys.stderr)
  elif args.torch:
    runners['torch'] = baselines.TorchReference(args, threads,
                                                'cuda' if jax.default_backend() == 'gpu' else 'cpu')
  resolved = {'strategy': strategy, 'loop': loop, 'materialize': materialize,
              'threads': threads}
  return step, runners, resolved, others


def summary(r: dict) -> str:
  lines = [f"{r['model']} batch {r['batch']} x {r['models']} models, strategy {r['strategy']} "
           f"on {r['backend']} ({r['device_kind']}): {1e3 * r['step_s']:.1f} ms/step, "
           f"{r['images_per_s']:.0f} images/s ({r['images_per_s_per_model']:.0f} per model), "
           f"{r['achieved_tflops'] * 1e3:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.0f}% of "
           f"matmul peak {r['matmul_peak_tflops'] * 1e3:.0f} GFLOP/s; "
           f"compile {r['compile_s']:.1f} s"]
  if 'sequential_ratio' in r:
    lines.append(f"vs {r['models']} models one after another: {r['sequential_ratio']:.2f}x "
                 f"(CPU time: {r['sequential_cpu_ratio']:.2f}x)")
  for name, other in r.get('compared_strategies', {}).items():
    lines.append(f"vs strategy {name}: {other['ratio']:.2f}x ({1e3 * other['step_s']:.1f} "
                 f"ms/step, compile {other['compile_s']:.1f} s)")
  if 'materialize_ratio' in r:
    lines.append(f"materialize={'on' if r['materialize'] else 'off'} vs "
                 f"{'off' if r['materialize'] else 'on'}: {r['materialize_ratio']:.2f}x")
  if 'conv_chunk_ratio' in r:
    from classbias_jax.models.cpu import CONV_BATCH_CHUNK
    lines.append(f"convolutions in chunks of {CONV_BATCH_CHUNK} images vs whole batches: "
                 f"{r['conv_chunk_ratio']:.2f}x (CPU time: {r['conv_chunk_cpu_ratio']:.2f}x)")
  if 'augment_overhead' in r:
    what = AUGMENTATIONS[r['augment'] if r['augment'] != 'off' else 'on']
    lines.append(f"augmentation ({what}): {100 * r['augment_overhead']:.1f}% of the "
                 f"step ({1e3 * r['augment_step_s']:.1f} vs {1e3 * r['no_augment_step_s']:.1f} "
                 f"ms; CPU time {100 * r['augment_cpu_overhead']:.1f}%); the augmentation "
                 f"alone: {1e3 * r['augment_alone_s']:.1f} ms = "
                 f"{100 * r['augment_alone_share']:.1f}% of the step")
  if 'torch_ratio' in r:
    lines.append(f"vs PyTorch eager ({r['torch_images_per_s']:.0f} images/s, "
                 f"{r['threads']} threads): {r['torch_ratio']:.2f}x (CPU time: "
                 f"{r['torch_cpu_ratio']:.2f}x)")
  if 'profile' in r:
    p = r['profile']
    lines.append(f"profile: {p['wall_ms_per_step']:.0f} ms/step wall, {p['op_ms_per_step']:.0f} "
                 f"ms/step in ops (summed over threads)")
    lines += [f"  {ms:8.1f} ms  {100 * ms / p['op_ms_per_step']:4.1f}%  {cat}"
              for cat, ms in p['category_ms'].items()]
    lines += [f"  {o['ms']:8.1f} ms  {o['name']} ({o['category']}) {o['op'][-70:]}"
              for o in p['top_ops']]
    if 'device_busy_ms_per_step' in p:
      lines.append(f"device busy {p['device_busy_ms_per_step']:.1f} ms per step (kernels "
                   f"summed); unmatched kernels: " + ', '.join(
                       f'{n[:60]} {ms:.2f} ms' for n, ms in p['top_unmatched']))
  return '\n'.join(lines)


def main(argv=None) -> None:
  from classbias_jax.tuning import hostmem
  args = parse_args(argv)
  # Before JAX starts its threads; from the command line it may execute the process again.
  hostmem.setup(args.malloc, may_exec=argv is None)
  if args.host_devices:
    # Must be set before JAX initialises its backends, hence the imports inside functions.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={args.host_devices}')
  record = benchmark(args)
  print(summary(record))
  print(json.dumps(record))


if __name__ == '__main__':
  main()
