"""Gradual magnitude pruning (train/prune.py): the ramp, exact sparsity and zeros over the
model axis, and sparsity 0 training exactly as no pruning."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT, run_until_first_checkpoint, tiny_config

from classbias_jax import configs, data, results
from classbias_jax.data import planted
from classbias_jax.errors import ConfigError, ResultsError
from classbias_jax.models import create_model
from classbias_jax.train import one_model, prune, trainer
from classbias_jax.train.plan import build_plan


def test_ramp_by_hand():
  """s(d) = s_f (1 - (1 - t)^3) between d0 and d1; masks at d0, d0 + k, ... and d1."""
  ramp = prune.Schedule(start=10, end=20, every=3)
  due = [d for d in range(30) if ramp.due(jnp.int32(d))]
  assert due == [10, 13, 16, 19, 20]
  for done, expected in ((0, 0.0), (10, 0.0), (15, 0.8 * (1 - 0.5 ** 3)), (18, 0.8 * (1 - 0.2 ** 3)),
                         (20, 0.8), (29, 0.8)):
    np.testing.assert_allclose(float(ramp.sparsity(jnp.float32(0.8), jnp.int32(done))),
                               expected, rtol=1e-6)
  once = prune.Schedule(start=5, end=5, every=100)  # one-shot
  assert [d for d in range(12) if once.due(jnp.int32(d))] == [5]
  assert float(once.sparsity(0.5, jnp.int32(4))) == 0 and float(once.sparsity(0.5, 5)) == 0.5
  fields = ml_collections.ConfigDict({'start_epoch': 0.5, 'end_epoch': 2.25, 'every_steps': 7})
  assert prune.schedule(fields, steps_per_epoch=4) == prune.Schedule(2, 9, 7)


def test_global_magnitude_masks():
  """The p smallest magnitudes over all kernels go, wherever they are; a weight pruned
  before stays pruned; biases and BatchNorm are never touched."""
  params = {'a': {'kernel': jnp.array([[0.5, -0.1], [3.0, 0.2]])},
            'b': {'kernel': jnp.array([-0.05, 4.0, 0.3, 0.01]), 'bias': jnp.array([0.0, 1e-9])},
            'BatchNorm_0': {'scale': jnp.array([1e-6])}}
  masks = prune.init(params)[prune.MASKS]
  assert set(masks) == {'a', 'b'} and set(masks['b']) == {'kernel'}
  new = prune.new_masks(params, masks, jnp.float32(0.5))  # 4 of the 8 kernel weights
  np.testing.assert_array_equal(new['a']['kernel'], [[True, False], [True, False]])
  np.testing.assert_array_equal(new['b']['kernel'], [False, True, True, False])
  masked = prune.apply(params, new)
  assert float(prune.measured_sparsity(masked)) == 0.5
  np.testing.assert_array_equal(masked['b']['bias'], params['b']['bias'])
  # A pruned weight that grew back (momentum) is not kept: the old mask still holds.
  regrown = {**masked, 'a': {'kernel': jnp.array([[0.5, 9.0], [3.0, 0.0]])}}
  again = prune.new_masks(regrown, new, jnp.float32(0.5))
  assert not bool(again['a']['kernel'][0, 1])
  assert all(bool(m.all()) for m in jax.tree.leaves(prune.new_masks(params, masks, 0.0)))


def _digits_plan(strategy, **overrides):
  config = tiny_config(**{'sweep__name': 'prune.sparsity', 'sweep__values': (0.0, 0.3, 0.9),
                          'seeds': 1, 'train__epochs': 2, 'prune__start_epoch': 0.0,
                          'prune__end_epoch': 1.0, 'prune__every_steps': 4, **overrides})
  configs.validate(config)
  dataset = data.load(config.data)
  mean, std = dataset.channel_stats()
  plan = build_plan(config, num_train=dataset.num_train, num_classes=10,
                    image_shape=dataset.image_shape, mean=mean, std=std, strategy=strategy)
  return plan, dataset


@pytest.mark.parametrize('strategy', ['unroll', 'vmap', 'sequential'])
def test_exact_sparsity_and_zeros_over_the_model_axis(strategy):
  """After the end epoch each model's fraction of zero prunable weights is its target
  (within one weight), the zeros are where its masks are False, and they stay zero
  through the epochs after; the unpruned model has no zero weight."""
  plan, dataset = _digits_plan(strategy)
  assert plan.prune and plan.resolved()['prune'] == {
      'start_step': 0, 'end_step': plan.steps_per_epoch, 'every_steps': 4}
  model = create_model('tiny', 10)
  epoch_fn = trainer.make_train_epoch(plan, model, trainer.ResidentInput(plan, dataset))
  state = jax.jit(jax.vmap(one_model.init_fn(plan, model)))(plan.keys()['init'])
  knobs, keys = {k: jnp.asarray(v) for k, v in plan.knobs.items()}, plan.keys()
  n = sum(k[0].size for k in jax.tree.leaves(prune.kernels(state['params'])))
  targets = np.asarray(plan.sweep.values)
  for epoch in range(2):
    state, metrics = epoch_fn(state, knobs, keys, epoch)
    zeros = np.asarray(jax.vmap(prune.measured_sparsity)(state['params'])) * n
    np.testing.assert_allclose(zeros, targets * n, atol=1.0)
    kernels = jax.tree.leaves(prune.kernels(state['params']))
    masks = jax.tree.leaves(state[prune.MASKS])
    for kernel, mask in zip(kernels, masks):
      np.testing.assert_array_equal(np.asarray(kernel) == 0, ~np.asarray(mask))
  assert np.isfinite(np.asarray(metrics['loss'])).all()


def test_sparsity_zero_trains_as_no_pruning(tmp_path, monkeypatch):
  """The sparsity-0 model of a pruning sweep is the model trained with pruning off, bit
  for bit; results.npz records each model's measured sparsity; a run stopped mid-ramp
  resumes from its checkpoint (masks included) to the same results."""
  overrides = {'seeds': 1, 'train__epochs': 2, 'train__eval_every': 0,
               'sweep__name': 'prune.sparsity', 'prune__start_epoch': 0.0,
               'prune__end_epoch': 1.0, 'prune__every_steps': 3}
  config = tiny_config(**overrides, sweep__values=(0.0, 0.8))
  swept = trainer.run(config, str(tmp_path / 'a'))
  stopped = tiny_config(**overrides, sweep__values=(0.0, 0.8), train__checkpoint_every_steps=10)
  run_until_first_checkpoint(stopped, str(tmp_path / 'c'), monkeypatch)
  resumed = trainer.run(stopped, str(tmp_path / 'c'))
  for key in ('sparsity', 'train_loss', 'test_predictions'):
    np.testing.assert_array_equal(resumed[key], swept[key], err_msg=key)
  plain = trainer.run(tiny_config(**overrides, sweep__values=(0.0,)), str(tmp_path / 'b'))
  assert 'sparsity' not in plain
  np.testing.assert_array_equal(swept['train_loss'][0], plain['train_loss'][0])
  np.testing.assert_array_equal(swept['test_predictions'][0], plain['test_predictions'][0])
  saved = results.load_results(str(tmp_path / 'a'))
  assert saved['sparsity'].shape == (2, 1) and saved['sparsity'][0, 0] == 0
  assert abs(saved['sparsity'][1, 0] - 0.8) < 1e-3
  assert not np.array_equal(swept['train_loss'][1], plain['train_loss'][0])


def test_bad_pruning_configs_are_one_line():
  with pytest.raises(ConfigError, match=r'prune.sparsity = 1.0 is outside'):
    configs.validate(tiny_config(**{'sweep__name': 'prune.sparsity', 'sweep__values': (0.0, 1.0)}))
  with pytest.raises(ConfigError, match='prune.end_epoch 20 <= train.epochs 3'):
    configs.validate(tiny_config(**{'prune__sparsity': 0.5}))
  with pytest.raises(ConfigError, match='start_epoch 2 <= prune.end_epoch 1'):
    configs.validate(tiny_config(**{'prune__sparsity': 0.5, 'prune__start_epoch': 2.0,
                                    'prune__end_epoch': 1.0}))
  configs.validate(tiny_config())  # no model prunes: the default ramp is not checked


def test_results_sparsity_shape_is_checked():
  arrays = {'per_class_accuracy': np.zeros((2, 3, 4), np.float32),
            'mean_accuracy': np.zeros((2, 3), np.float32),
            'test_labels': np.arange(5, dtype=np.int32) % 4,  # every class has test images
            'test_predictions': np.zeros((2, 3, 5), np.int32), 'sweep_name': np.asarray('x'),
            'sweep_values': np.zeros(2), 'seeds': np.arange(3), 'class_names': np.asarray(list('abcd')),
            'sparsity': np.zeros((2, 3), np.float32)}
  results.validate(arrays)
  with pytest.raises(ResultsError, match='sparsity has shape'):
    results.validate(dict(arrays, sparsity=np.zeros(6, np.float32)))


@pytest.mark.parametrize('arg', ['', 'runlocal'])
def test_the_study_sweeps_sparsity(arg):
  config = configs.load(f'configs/prune.py:{arg}', root=ROOT)
  configs.validate(config)
  assert config.sweep.name == 'prune.sparsity' and max(config.sweep['values']) == 0.9
  assert min(config.sweep['values']) == 0.0  # the reference: no pruning
  if arg:
    assert config.data.name == 'planted' and config.seeds == 8 and config.data.planted_rare
  else:  # Hooker et al.'s setting
    assert (config.model.name, config.seeds, config.data.name) == ('resnet50', 30, 'imagenet2012')


def test_the_study_runs(tmp_path):
  """The runlocal study shrunk to seconds (tiny model, one epoch, the sweep's ends) trains
  and records each model's sparsity."""
  config = configs.smoke(configs.load('configs/prune.py:runlocal', root=ROOT))
  config.prune.start_epoch, config.prune.end_epoch = 0.0, 1.0  # the ramp inside one epoch
  out = trainer.run(config, str(tmp_path))
  np.testing.assert_allclose(out['sparsity'][:, 0], [0.0, 0.9], atol=1e-3)


def test_planted_rare_family():
  """data.planted_rare keeps the first n training images of none-rings and none-dots, and
  nothing else changes; n outside 1..planted_train_per_class is a one-line error."""
  full = ml_collections.ConfigDict({'name': 'planted', 'planted_train_per_class': 12,
                                    'image_size': 8})
  rare = ml_collections.ConfigDict(dict(full.to_dict(), planted_rare=3))
  a, b = planted.load(full), planted.load(rare)
  counts = np.bincount(b.train_labels, minlength=10)
  rare_ids = [planted.CLASS_NAMES.index(n) for n in planted.RARE_CLASSES]
  assert counts[rare_ids].tolist() == [3, 3] and np.delete(counts, rare_ids).tolist() == [12] * 8
  for c in range(10):
    n = counts[c]
    np.testing.assert_array_equal(b.train_images[b.train_labels == c],
                                  a.train_images[a.train_labels == c][:n])
  np.testing.assert_array_equal(b.test_images, a.test_images)
  with pytest.raises(ConfigError, match='planted_rare 13 must be in 0..12'):
    planted.load(ml_collections.ConfigDict(dict(full.to_dict(), planted_rare=13)))


def test_the_sort_runs_only_at_mask_steps_under_vmap():
  """Steps done are shared by the models, so under vmap the recomputation stays a
  lax.cond (a select would sort at every step)."""
  params = {'Conv_0': {'kernel': jnp.ones((2, 3, 3)) * jnp.arange(9.0).reshape(3, 3)}}
  masks = jax.vmap(prune.init)(params)[prune.MASKS]
  ramp = prune.Schedule(start=0, end=4, every=2)
  lifted = jax.vmap(lambda p, m, s, d: prune.after_update(p, m, s, d, ramp),
                    in_axes=(0, 0, 0, None))
  text = str(jax.make_jaxpr(lifted)(params, masks, jnp.array([0.0, 0.5]), jnp.int32(4)))
  assert 'cond[' in text and 'sort[' in text
  new_params, new_masks = lifted(params, masks, jnp.array([0.0, 0.5]), jnp.int32(4))
  kept = np.asarray(new_masks['Conv_0']['kernel']).sum(axis=(1, 2))
  assert kept.tolist() == [9, 5]  # round(0.5 * 9) = 4 (half to even) of the 9 pruned
