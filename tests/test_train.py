"""The end-to-end study: trainer, model axis, common random numbers, results contract."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, init_states, tiny_config, tiny_plan

from classbias_jax import augment, configs, knob_table, results
from classbias_jax.errors import ConfigError
from classbias_jax.train import model_axis
from classbias_jax.train.plan import build_plan
from classbias_jax.train import design
from classbias_jax.train import one_model
from classbias_jax.train import trainer
from classbias_jax.data import planted
from classbias_jax.models import create_model
from classbias_jax.tuning import hostmem


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tiny'))
  config = tiny_config(**{'sweep__values': (0.0, 1e-3, 5e-3)})
  trainer.run(config, workdir)
  return workdir, config


def test_results_contract(tiny_run):
  workdir, config = tiny_run
  r = results.load_results(workdir)
  v, s, c, n = 3, 2, 10, len(r['test_labels'])
  assert r['per_class_accuracy'].shape == (v, s, c)
  assert r['mean_accuracy'].shape == (v, s)
  assert r['test_predictions'].shape == (v, s, n)
  assert r['sweep_values'].tolist() == [0.0, 1e-3, 5e-3]
  assert r['seeds'].tolist() == [0, 1]
  assert str(r['sweep_name']) == 'optim.weight_decay'
  assert len(r['class_names']) == c
  # Per-class accuracy is the confusion diagonal over its row sums.
  conf = results.confusion_matrices(r['test_labels'], r['test_predictions'], c)
  np.testing.assert_allclose(r['per_class_accuracy'],
                             np.diagonal(conf, axis1=2, axis2=3) / conf.sum(-1), rtol=1e-6)
  # Trained well above chance (10 classes).
  assert r['mean_accuracy'].min() > 0.5
  assert r['train_loss'].shape == (v, s, config.train.epochs)
  assert not r['diverged'].any()
  for name in ('config.json', 'metrics.jsonl'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert [json.loads(x)['epoch'] for x in lines] == [1, 2, 3]
  assert len(json.loads(lines[-1])['test_accuracy']) == v * s


def test_weight_decay_differs_per_model():
  """Larger decay, smaller weights: the per-model decay really reaches each model."""
  config = tiny_config(**{'sweep__values': (0.0, 0.1), 'seeds': 1, 'train__epochs': 2})
  from classbias_jax import data
  ds = data.load(config.data)
  model = create_model('tiny', 10)
  mean, std = ds.channel_stats()
  plan = build_plan(config, num_train=ds.num_train, num_classes=10,
                        image_shape=ds.image_shape, mean=mean, std=std, strategy='unroll')
  epoch_fn = trainer.make_train_epoch(plan, model, trainer.ResidentInput(plan, ds))
  state, keys = init_states(plan, model), plan.keys()
  knobs = {k: jax.numpy.asarray(v) for k, v in plan.knobs.items()}
  for epoch in range(2):
    state, _ = epoch_fn(state, knobs, keys, epoch)
  kernel = state['params']['Dense_0']['kernel']  # [M, features, classes]
  norms = np.sqrt((np.asarray(kernel) ** 2).sum(axis=(1, 2)))
  assert norms[1] < 0.8 * norms[0], norms


def _invert(key, img, invert_prob):
  """A new op's kernel: the image's negative with probability invert_prob."""
  return jnp.where(jax.random.uniform(key) < invert_prob, 1.0 - img, img)


def test_a_new_knob_is_one_row(tmp_path, monkeypatch):
  """A row of knob_table.KNOBS and its op's kernel in augment.KERNELS are the whole change:
  'aug.invert_prob' (a new op) becomes a config field, validated, sweepable in one
  program, per class, compiled only when on; its 0 model is the model trained without it
  and its 1 model sees negatives."""
  row = knob_table.Knob(0.0, 'invert', 'pixels', off=0.0, per_class=True, high=1.0)
  monkeypatch.setattr(knob_table, 'KNOBS', dict(knob_table.KNOBS, **{'aug.invert_prob': row}))
  monkeypatch.setitem(augment.KERNELS, 'invert', _invert)
  overrides = {'seeds': 1, 'train__epochs': 2, 'train__eval_every': 0}
  swept = tiny_config(**overrides, **{'sweep__name': 'aug.invert_prob',
                                      'sweep__values': (0.0, 1.0)})
  plain = tiny_config(**overrides, **{'sweep__values': (5e-4,)})  # the base weight decay
  assert swept.aug.invert_prob == 0.0 and 'aug.invert_prob' in knob_table.traced_knobs()
  plan = tiny_plan(swept)
  assert plan.ops == ('invert',) and tiny_plan(plain).ops == ()
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), np.uint8)
  labels = np.array([0, 1, 0, 1])
  preprocess = one_model.make_preprocess(plan)
  x = images / 255.0
  for m, expected in ((0, x), (1, 1.0 - x)):
    out, _ = preprocess(jax.random.key(0), images, labels, {k: v[m] for k, v in plan.knobs.items()})
    np.testing.assert_allclose(out, (expected - 0.5) / 0.25, atol=1e-5)
  swept.class_knobs.invert_prob = (1.0,) + (float('nan'),) * 9  # class 0 alone, at value 0
  plan = tiny_plan(swept)
  out, _ = one_model.make_preprocess(plan)(jax.random.key(0), images, labels,
                                           {k: v[0] for k, v in plan.knobs.items()})
  np.testing.assert_allclose(out, (np.where(labels[:, None, None, None] == 0, 1 - x, x) - 0.5)
                             / 0.25, atol=1e-5)
  del swept.class_knobs['invert_prob']
  r = trainer.run(swept, str(tmp_path / 'swept'))
  ref = trainer.run(plain, str(tmp_path / 'plain'))
  assert r['sweep_name'] == 'aug.invert_prob' and r['per_class_accuracy'].shape[:2] == (2, 1)
  np.testing.assert_allclose(r['train_loss'][0], ref['train_loss'][0], rtol=1e-4)
  assert not np.allclose(r['train_loss'][0], r['train_loss'][1], rtol=1e-3)
  swept.aug.invert_prob = 2.0
  with pytest.raises(ConfigError, match='aug.invert_prob = 2.0 is outside'):
    configs.validate(swept)


def test_an_optimizer_knob_is_one_row(tmp_path, monkeypatch):
  """The step reads optimiser values through one_model.hyperparameter: adding
  optim.momentum's row makes it per model; the momentum-0.9 model of the sweep is the
  model trained with momentum 0.9 fixed."""
  knobs = dict(knob_table.KNOBS,
               **{'optim.momentum': knob_table.Knob(0.9, 'optimizer', 'step', off=0.0)})
  monkeypatch.setattr(knob_table, 'KNOBS', knobs)
  overrides = {'seeds': 1, 'train__epochs': 2, 'train__eval_every': 0}
  swept = tiny_config(**overrides, **{'sweep__name': 'optim.momentum',
                                      'sweep__values': (0.0, 0.9)})
  assert 'optim.momentum' in knob_table.traced_knobs()
  fixed = tiny_config(**overrides, **{'sweep__values': (5e-4,)})
  r = trainer.run(swept, str(tmp_path / 'swept'))
  ref = trainer.run(fixed, str(tmp_path / 'fixed'))
  assert r['sweep_name'] == 'optim.momentum' and r['per_class_accuracy'].shape[:2] == (2, 1)
  np.testing.assert_allclose(r['train_loss'][1], ref['train_loss'][0], rtol=1e-4)
  assert not np.allclose(r['train_loss'][0], r['train_loss'][1], rtol=1e-3)


def test_common_random_numbers():
  """Same seed, different sweep value: same init, same data order, same aug keys."""
  config = tiny_config(**{'sweep__values': (0.0, 0.05), 'seeds': 2})
  sweep = design.sweep_from_config(config)
  keys = design.model_keys(sweep)
  assert sweep.value_index.tolist() == [0, 0, 1, 1]
  assert sweep.seed_index.tolist() == [0, 1, 0, 1]
  model = create_model('tiny', 10)
  state = init_states(tiny_plan(config), model)
  kernel = np.asarray(state['params']['Conv_0']['kernel'])
  np.testing.assert_array_equal(kernel[0], kernel[2])  # seed 0 at both values
  assert not np.array_equal(kernel[0], kernel[1])  # seed 0 vs seed 1
  perms = np.asarray(one_model.epoch_permutations(keys['data'], 0, 100))
  np.testing.assert_array_equal(perms[0], perms[2])
  assert not np.array_equal(perms[0], perms[1])
  assert not np.array_equal(perms[0], np.asarray(one_model.epoch_permutations(keys['data'], 1, 100))[0])
  aug = jax.random.key_data(keys['aug'])
  np.testing.assert_array_equal(aug[0], aug[2])


@pytest.mark.parametrize('strategy', ['vmap', 'chunked', 'sequential'])
def test_strategies_agree(tmp_path, strategy):
  """Every model-axis strategy trains the same models (up to float reassociation)."""
  out = {}
  for name in ('unroll', strategy):
    config = tiny_config(**{'train__strategy': name, 'train__epochs': 1, 'train__chunk_size': 2,
                            'train__eval_every': 0, 'seeds': 2})
    out[name] = trainer.run(config, str(tmp_path / name))
  agree = (out['unroll']['test_predictions'] == out[strategy]['test_predictions']).mean()
  assert agree > 0.97
  np.testing.assert_allclose(out['unroll']['train_loss'], out[strategy]['train_loss'], rtol=2e-3)


@pytest.mark.parametrize('strategy', ['unroll', 'sequential'])
def test_no_recompilation_between_epochs(tmp_path, strategy):
  config = tiny_config(**{'train__epochs': 3, 'train__eval_every': 1, 'seeds': 1,
                          'train__strategy': strategy})
  sweep = design.sweep_from_config(config)
  traces = []
  original = model_axis.over_models

  def counting(fn, *args, **kw):
    def counted(*a, **k):
      traces.append(1)
      return fn(*a, **k)
    return original(counted, *args, **kw)

  model_axis.over_models = counting
  try:
    trainer.run(config, str(tmp_path))
  finally:
    model_axis.over_models = original
  # unroll: one trace of the train step per model, one of predict per model; sequential:
  # one of each (a one-model program); none per epoch.
  per_program = sweep.num_models if strategy == 'unroll' else 1
  assert sweep.num_models == 2 and len(traces) == 2 * per_program, len(traces)


def test_planted_is_deterministic():
  x1, y1 = planted.generate(4, seed=3)
  x2, y2 = planted.generate(4, seed=3)
  x3, _ = planted.generate(4, seed=4)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, y2)
  assert not np.array_equal(x1, x3)
  assert x1.shape == (40, 32, 32, 3) and x1.dtype == np.uint8
  assert np.bincount(y1).tolist() == [4] * 10
  prefixes = {n.split('-')[0] for n in planted.CLASS_NAMES}
  assert prefixes == {'color', 'crop', 'none'}


def _main(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'classbias_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, env=env, timeout=600)


def test_main_runs_the_study(tmp_path):
  workdir = tmp_path / 'wd'
  proc = _main('--config=configs/wd.py:runlocal,seeds=1,epochs=1', f'--workdir={workdir}',
               '--config.model.name=tiny', '--config.sweep.values=(0.0,0.01)')
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = results.load_results(str(workdir))
  assert r['per_class_accuracy'].shape == (2, 1, 10)
  assert 'epoch 1/1' in proc.stderr
  assert (workdir / 'figures' / 'per_class_accuracy.png').stat().st_size > 0  # drawn by main
  # The entry point puts the allocator in its default mode (hostmem.py) and records it.
  malloc = json.loads((workdir / 'config.json').read_text())['resolved']['host_malloc']
  assert malloc == ('hugepages' if hostmem.hugepages_available() else 'system')


def test_unknown_config_arg_is_an_error(tmp_path):
  proc = _main('--config=configs/wd.py:runlocal,bogus=1', f'--workdir={tmp_path / "x"}')
  assert proc.returncode != 0
  assert 'bogus' in proc.stderr
  assert not (tmp_path / 'x').exists()


def test_missing_dataset_is_one_line(tmp_path):
  workdir = tmp_path / 'real'
  proc = _main('--config=configs/wd.py', f'--workdir={workdir}',
               f'--config.data.data_dir={tmp_path / "no_data"}')
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and 'cifar100' in err[0], proc.stderr
  assert not workdir.exists()


@pytest.mark.skipif(not os.path.isdir('/usr/share/datasets/fashion-mnist'),
                    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_fashion_mnist_end_to_end(tmp_path):
  """The real Debian files through a tiny run: 640 training images, the full test set."""
  config = tiny_config(**{'data__name': 'fashion_mnist', 'data__train_subset': 640,
                          'train__epochs': 3, 'seeds': 1, 'train__eval_every': 0,
                          'optim__warmup_epochs': 0.0, 'sweep__values': (0.0, 1e-3)})
  r = trainer.run(config, str(tmp_path))
  assert r['per_class_accuracy'].shape == (2, 1, 10)
  assert len(r['test_labels']) == 10000
  assert list(r['class_names'][:2]) == ['T-shirt/top', 'Trouser']
  assert r['mean_accuracy'].max() > 0.3  # chance is 0.1


def test_compile_cache_setting(monkeypatch):
  """train.compile_cache names the folder; $CLASSBIAS_COMPILE_CACHE overrides it; '' is off."""
  before = jax.config.jax_compilation_cache_dir
  config = tiny_config(**{'train__compile_cache': ''})
  monkeypatch.delenv(trainer.ENV_COMPILE_CACHE, raising=False)
  assert trainer.setup_compile_cache(config) == ''
  assert jax.config.jax_compilation_cache_dir == before  # untouched when off
  monkeypatch.setenv(trainer.ENV_COMPILE_CACHE, before)
  assert trainer.setup_compile_cache(config) == before
  monkeypatch.setenv(trainer.ENV_COMPILE_CACHE, '')
  assert trainer.setup_compile_cache(tiny_config()) == ''
  assert configs.base_config().train.compile_cache.endswith(os.path.join('classbias_jax', 'jax'))
