"""The cost of a checkpoint: seconds per save through checkpoint.save (the train state and
the meta item, as a run writes them), bytes on disk, and that as % of an epoch.

    python -m classbias_jax.tuning.checkpoint_cost --config=configs/wd.py:runlocal
    python -m classbias_jax.tuning.checkpoint_cost --config=configs/wd.py:seeds=8 \
        --set=sweep.values=0.0 --set=model.dtype=float32 --stand-in=32,100,50000 --steps=2

Without --stand-in the study's own data set is loaded (resident) and one epoch is trained
after a warm-up epoch: the epoch time is measured. With --stand-in=SIZE,CLASSES,IMAGES
(a data set the machine cannot train an epoch of) `--steps` steps of the study's step
on random SIZExSIZE images are timed after a warm-up step and scaled to IMAGES // batch
steps: the epoch time is estimated. The last line printed is one JSON record.

JAX, and every module of the package that loads it, is imported inside the functions that
use it: `__main__` first sets the host allocator (hostmem.setup may execute the process
again), which must precede JAX's start.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np


def load_config(spec: str, settings: Sequence[str] = ()):
  """'configs/wd.py:runlocal' -> that file's get_config('runlocal'), with each
  'dotted.key=value' of `settings` applied (values as Python literals, else strings)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('study_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for setting in settings:
    key, _, text = setting.partition('=')
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, last = key.split('.')
    node = config
    for name in parents:
      node = node[name]
    node[last] = tuple(value) if isinstance(value, list) else value
  return config


def _model(config, num_classes: int):
  import jax.numpy as jnp
  from classbias_jax.models import create_model
  dtype = jnp.bfloat16 if config.model.dtype == 'bfloat16' else jnp.float32
  return create_model(config.model.name, num_classes, config.model.width, dtype)


def measured_epoch(config, workdir: str):
  """(plan, state, epoch seconds): the study's data, one warm-up epoch, one timed epoch."""
  import jax
  from classbias_jax.train import epochs, trainer
  from classbias_jax.data import modes
  dataset, _ = modes.load_dataset(config.data, 'resident')
  model = _model(config, dataset.num_classes)
  plan = trainer.make_plan(config, dataset, model)
  keys, state, knobs = trainer.initial_state(plan, model, workdir, None)
  train_epoch = epochs.make_train_epoch(plan, model, trainer.ResidentInput(plan, dataset))
  seconds = []
  for epoch in range(2):  # the first compiles
    start = time.perf_counter()
    state, metrics = train_epoch(state, knobs, keys, epoch)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
  return plan, state, seconds[-1]


def estimated_epoch(config, size: int, classes: int, images: int, steps: int):
  """(plan, state, epoch seconds): `steps` timed steps on random images (after one
  warm-up step) times the IMAGES // batch steps of an epoch; the state freshly made."""
  import jax
  from classbias_jax.train import model_axis, one_model
  from classbias_jax.tuning import prepared
  shape = (size, size, 3)
  model = _model(config, classes)
  plan = prepared.stand_in_plan(config, image_shape=shape, num_classes=classes,
                                strategy=None, loop='python', num_batches=1)
  timed = prepared.prepared_step(model, config, image_shape=shape, num_classes=classes,
                                 strategy=plan.strategy, num_batches=1, count_flops=False)
  timed.run()
  start = time.perf_counter()
  for _ in range(steps):
    timed.run()
  step_s = (time.perf_counter() - start) / steps
  del timed  # its state: one copy of the models at a time
  state = jax.jit(jax.vmap(one_model.init_fn(plan, model)))(plan.keys()['init'])
  state = model_axis.put_models(state, plan.strategy)
  return plan, state, step_s * (images // config.train.batch_size)


def _bytes_under(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def time_saves(plan, state, workdir: str, saves: int) -> tuple[list[float], int]:
  """Seconds of each of `saves` checkpoint.save calls of `state` at successive epochs
  (the newest two kept, as in a run), and the bytes of the last checkpoint."""
  import jax
  from classbias_jax.train import checkpoint
  from classbias_jax.train.history import History
  jax.block_until_ready(state)
  history = History(np.zeros(plan.num_models, bool))
  meta = dict(history.to_json(), config=checkpoint.config_json(plan.config),
              input_mode='resident')
  seconds = []
  for epoch in range(1, saves + 1):
    start = time.perf_counter()
    path = checkpoint.save(workdir, epoch, state, meta, steps_per_epoch=plan.steps_per_epoch)
    seconds.append(time.perf_counter() - start)
  return seconds, _bytes_under(path)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m classbias_jax.tuning.checkpoint_cost',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True, help="a study, e.g. 'configs/wd.py:runlocal'")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help="a config field, e.g. 'model.name=tiny' (repeatable)")
  p.add_argument('--stand-in', default='', metavar='SIZE,CLASSES,IMAGES',
                 help='random images instead of the data set; the epoch time is estimated')
  p.add_argument('--steps', type=int, default=3, help='timed steps (--stand-in)')
  p.add_argument('--saves', type=int, default=5, help='timed saves')
  p.add_argument('--workdir', default='', help='where to save (default: a temporary folder)')
  return p.parse_args(argv)


def measure(args) -> dict:
  """The record: models, state and checkpoint bytes, seconds per save, the epoch's
  seconds and how they were found, and a save as % of the epoch."""
  import jax
  from classbias_jax.train import trainer
  config = load_config(args.config, args.set)
  trainer.setup_compile_cache(config)
  with tempfile.TemporaryDirectory() as scratch:
    workdir = args.workdir or scratch
    if args.stand_in:
      size, classes, images = (int(n) for n in args.stand_in.split(','))
      plan, state, epoch_s = estimated_epoch(config, size, classes, images, args.steps)
      how = (f'estimated: {args.steps} steps on random {size}x{size} images x '
             f'{images // config.train.batch_size} steps per epoch')
    else:
      plan, state, epoch_s = measured_epoch(config, workdir)
      how = f'measured: one epoch of {plan.steps_per_epoch} steps after a warm-up epoch'
    seconds, disk = time_saves(plan, state, workdir, args.saves)
  save_s = float(np.mean(seconds))
  return {'config': args.config, 'set': args.set, 'model': config.model.name,
          'models': plan.num_models, 'strategy': plan.strategy,
          'backend': jax.default_backend(),
          'state_bytes': int(sum(x.nbytes for x in jax.tree.leaves(state))),
          'checkpoint_bytes': disk, 'saves': len(seconds), 'save_s': save_s,
          'save_s_each': [round(s, 4) for s in seconds], 'epoch_s': epoch_s, 'epoch': how,
          'save_percent_of_epoch': 100 * save_s / epoch_s}


def main(argv=None) -> dict:
  record = measure(parse_args(argv))
  print(f'{record["models"]} x {record["model"]}: {record["state_bytes"] / 1e6:.1f} MB of '
        f'state, {record["checkpoint_bytes"] / 1e6:.1f} MB on disk; '
        f'{record["save_s"]:.3f} s per save = {record["save_percent_of_epoch"]:.2f}% of an '
        f'epoch of {record["epoch_s"]:.1f} s ({record["epoch"]})', file=sys.stderr)
  print(json.dumps(record))
  return record


if __name__ == '__main__':
  from classbias_jax.tuning import hostmem
  hostmem.setup()  # the allocator of a run; may execute the process again, so first
  main(sys.argv[1:])
