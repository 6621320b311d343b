"""The fix: policies chosen on validation (fix.py), the arms on the model axis (arms.py),
CLAM's per-class loss weights (class_weights.py) and the fix study's report."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_states, tiny_config, tiny_plan

from classbias_jax import configs, report, results
from classbias_jax.train import checkpoint
from classbias_jax.train import class_weights
from classbias_jax.fix import report as fix_report
from classbias_jax.fix.policy import choose_policy
from classbias_jax.fix import policy
from classbias_jax.train import trainer
from classbias_jax.train import one_model
from classbias_jax.errors import ConfigError, ResultsError
from classbias_jax.models import create_model

NAMES = ('a', 'b', 'c')


def sweep_results(accuracy, seeds=4, per_class=80, seed=0):
  """A crop sweep's results whose validation accuracy of class c at value v is about
  accuracy[v][c] (each seed's predictions drawn at random around it)."""
  rng = np.random.default_rng(seed)
  values = np.asarray([0.1, 0.35, 1.0])
  labels = np.repeat(np.arange(len(NAMES)), per_class).astype(np.int32)
  p = np.asarray(accuracy)[:, None, labels]  # [V, 1, N]
  correct = rng.random((len(values), seeds, labels.size)) < p
  predictions = np.where(correct, labels, (labels + 1) % len(NAMES)).astype(np.int32)
  acc = results.class_accuracy(predictions == labels, labels, len(NAMES))
  return {'sweep_name': np.asarray('aug.crop_scale_min'), 'sweep_values': values,
          'seeds': np.arange(seeds), 'class_names': np.asarray(NAMES),
          'test_labels': labels, 'test_predictions': predictions, 'per_class_accuracy': acc,
          'mean_accuracy': acc.mean(-1), 'val_labels': labels, 'val_predictions': predictions}


def test_policies_follow_the_validation_evidence():
  # 0.35 is the best uniform value; class a does best at 0.1, class c at 1.0 (off).
  r = sweep_results([[0.97, 0.5, 0.5], [0.8, 0.8, 0.8], [0.5, 0.5, 0.99]])
  policy = choose_policy(r)
  assert policy['uniform'] == 0.35 and policy['off'] == 1.0
  assert policy['policies']['per_class'] == [0.1, 0.35, 1.0]
  assert policy['policies']['protect'] == [0.35, 0.35, 1.0]  # only the class u hurts vs off
  assert policy['evidence']['gain'][1] is None and policy['evidence']['gain'][0] > 0.1


def test_weak_evidence_keeps_the_uniform_value():
  # Two points of difference on 80 images and 4 seeds: not evidence; one seed: none at all.
  r = sweep_results([[0.8, 0.8, 0.82], [0.8, 0.8, 0.8], [0.8, 0.8, 0.8]])
  r['mean_accuracy'][1] += 0.1  # 0.35 the best uniform value
  r['val_predictions'][1] = r['val_predictions'][2]
  assert choose_policy(r)['policies']['per_class'] == [0.35] * 3
  one = sweep_results([[0.99, 0.5, 0.5], [0.8, 0.8, 0.8], [0.5, 0.5, 0.99]], seeds=1)
  policy = choose_policy(one)
  assert policy['policies']['per_class'] == [policy['uniform']] * 3
  assert policy['num_seeds'] == 1


def test_the_policy_needs_validation_and_a_per_class_knob(tmp_path):
  r = sweep_results([[0.9] * 3] * 3)
  del r['val_predictions'], r['val_labels']
  with pytest.raises(ResultsError, match='val_fraction'):
    choose_policy(r)
  r = sweep_results([[0.9] * 3] * 3)
  r['sweep_name'] = np.asarray('optim.weight_decay')
  with pytest.raises(ConfigError, match='cannot take a value per class'):
    choose_policy(r)


def test_class_weights_follow_clams_rule():
  state = class_weights.init(3)
  labels = jnp.asarray([0, 0, 1, 1, 2, 2])
  correct = jnp.asarray([1, 1, 1, 0, 0, 0], bool)
  mid = class_weights.update(state, labels, correct, 1.0, False)
  assert (mid['class_weights'] == 1).all() and mid['class_seen'].tolist() == [2, 2, 2]
  end = class_weights.update(mid, labels, correct, 1.0, True)
  # CLAM's update with these accuracies (1, 0.5, 0 over the epoch's two steps).
  d = np.exp(-np.asarray([1.0, 0.5, 0.0]))
  w = np.clip(d / d.mean(), 0.5, 2.0)
  np.testing.assert_allclose(end['class_weights'], w / w.mean(), rtol=1e-6)
  assert end['class_seen'].sum() == 0
  off = class_weights.update(mid, labels, correct, 0.0, True)
  assert (off['class_weights'] == 1).all()


def test_unit_weights_train_exactly_as_the_plain_loss():
  config = tiny_config()
  model = create_model('tiny', 10)
  plain = tiny_plan(config, strategy='vmap')
  weighted = dataclasses.replace(plain, class_weights=True)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (64, 8, 8, 1)), jnp.uint8)
  labels = jnp.asarray(np.arange(64) % 10, jnp.int32)
  outs = []
  for p in (plain, weighted):
    step = jax.vmap(one_model.make_train_step(p, model), in_axes=(0, 0, None))
    state, keys = init_states(p, model), p.keys()
    perms = jnp.tile(jnp.arange(64), (p.num_models, 1))
    outs.append(step(state, one_model.ModelInputs(p.knobs, keys['aug'], perms),
                     one_model.Batch(images, labels, 0, 0))[0])
  for a, b in zip(jax.tree.leaves(outs[0]['params']), jax.tree.leaves(outs[1]['params'])):
    np.testing.assert_array_equal(a, b)


def fix_config(folder, values=(0.0, 1.0, 2.0, 3.0)):
  config = tiny_config(**{'sweep__name': configs.ARM_SWEEP, 'sweep__values': values})
  config.fix = configs.ml_collections.ConfigDict({'policy_from': str(folder),
                                                  'class_weight_rate': 1.0})
  return config


def write_policy(folder, table, config, knob='aug.color_strength', uniform=0.5, **recipe):
  """A sweep's config.json (the fix study's recipe, changed by `recipe`) and the
  policy.json chosen from it, as `python -m classbias_jax.fix` writes them."""
  os.makedirs(folder, exist_ok=True)
  names = [str(i) for i in range(len(table))]
  sweep = dict(checkpoint.config_json(config), sweep={'name': knob, 'values': [0.0, 0.5, 1.0]},
               resolved={'class_names': names}, **recipe)
  policy = {'knob': knob, 'class_names': names, 'sweep_values': [0.0, 0.5, 1.0],
            'sweep_fingerprint': configs.fingerprint(sweep),
            'uniform': uniform, 'off': 0.0, 'policy': 'per_class',
            'policies': {'per_class': table, 'protect': [uniform] * len(table)}}
  for name, obj in (('config.json', sweep), (configs.POLICY_FILE, policy)):
    with open(os.path.join(folder, name), 'w') as f:
      json.dump(obj, f)
  return policy


def test_arms_are_tables_on_the_model_axis(tmp_path):
  config = fix_config(tmp_path)
  write_policy(tmp_path, [0.0] * 3 + [1.0] * 7, config)
  configs.validate(config)
  plan = tiny_plan(config, image_shape=(8, 8, 3))
  table = plan.knobs['color_strength']  # [M, C], M = 4 arms x 2 seeds
  assert table.shape == (8, 10) and plan.ops == ('color',)
  assert (table[:2] == 0.5).all() and (table[2:4] == 0).all()  # uniform, off
  assert (table[4:6, :3] == 0).all() and (table[4:6, 3:] == 1).all()  # the policy
  assert (table[6:] == 0.5).all() and plan.class_weights  # loss_weights: uniform + CLAM
  assert plan.knobs['class_weight_rate'].tolist() == [0] * 6 + [1] * 2
  assert plan.resolved()['fix']['changed']['policy'] == [str(i) for i in range(10)]
  write_policy(tmp_path, [0.0] * 3 + [1.0] * 7, config, model={'name': 'resnet8'})
  with pytest.raises(ConfigError, match='must train as the sweep'):  # another model
    tiny_plan(config, image_shape=(8, 8, 3))
  write_policy(tmp_path, [0.0] * 3 + [1.0] * 7, config, uniform=0.0)  # u is the off value
  config.sweep['values'] = (0.0, 1.0, 2.0, 3.0, 5.0)
  plan = tiny_plan(config, image_shape=(8, 8, 3))  # off and protect would repeat uniform
  assert plan.resolved()['fix']['arms'] == ['uniform', 'policy', 'loss_weights']
  assert plan.resolved()['fix']['same_as'] == {'off': 'uniform', 'protect': 'uniform'}
  assert plan.sweep.values.tolist() == [0, 2, 3] and plan.knobs['color_strength'].shape == (6, 10)
  config.sweep['values'] = (0.0, 9.0)
  with pytest.raises(ConfigError, match='arm indices'):
    configs.validate(config)
  config.sweep['values'] = (0.0, 1.0)
  config.fix.policy_from = str(tmp_path / 'nowhere')
  with pytest.raises(ConfigError, match='classbias_jax.fix'):
    tiny_plan(config)


def test_a_fix_study_end_to_end(tmp_path):
  """Sweep with validation -> policy.json -> arms trained -> the report's fix section."""
  sweep = tiny_config(**{'sweep__name': 'aug.color_strength', 'sweep__values': (0.0, 1.0),
                         'data__val_fraction': 0.2, 'train__epochs': 1, 'seeds': 2,
                         'train__eval_every': 0})
  sweep.data.name = 'planted'
  sweep.data.planted_train_per_class = 40
  sweep.data.image_size = 8
  trainer.run(sweep, str(tmp_path / 'sweep'))
  written = policy.write_policy(str(tmp_path / 'sweep'))
  assert len(written['policies']['per_class']) == 10 and written['table'][0].startswith('| class')
  config = sweep.copy_and_resolve_references()
  config.sweep.name, config.sweep['values'] = configs.ARM_SWEEP, (0.0, 1.0, 2.0, 3.0)
  config.fix = configs.ml_collections.ConfigDict({'policy_from': str(tmp_path / 'sweep'),
                                                  'class_weight_rate': 1.0})
  out = trainer.run(config, str(tmp_path / 'fix'))
  trained = json.load(open(tmp_path / 'fix' / 'config.json'))['resolved']['fix']
  assert out['value_names'].tolist() == trained['arms'] == [  # an arm that repeats one is not
      a for a in ('uniform', 'off', 'policy', 'loss_weights') if a not in trained['same_as']]
  report.write(str(tmp_path / 'fix'), num_bootstrap=50)
  text = open(tmp_path / 'fix' / 'report.md').read()
  assert '## The fix: arms on the test split' in text and '| loss_weights |' in text
  assert 'Recommended on the validation split' in text
  stats = json.load(open(tmp_path / 'fix' / 'analysis.json'))
  assert stats['reference']['chosen_by'] == 'the best uniform arm'
  assert [a['arm'] for a in stats['fix']['arms']][0] == 'uniform'
  worst = fix_report.per_seed(results.load_results(str(tmp_path / 'fix')))['worst_class']
  assert worst.shape == (len(trained['arms']), 2) and np.all((worst >= 0) & (worst <= 1))


def test_the_recommended_arm_is_chosen_on_validation():
  # Arms 0 uniform, 2 policy, 3 loss_weights; class c is the worst. The policy loses class
  # c on validation; the loss weights lift it by 15 points at a mean 0.2 points lower.
  r = sweep_results([[0.9, 0.9, 0.6], [0.9, 0.9, 0.3], [0.89, 0.89, 0.75]], seeds=6,
                    per_class=400)
  r['sweep_name'], r['sweep_values'] = np.asarray(configs.ARM_SWEEP), np.asarray([0., 2., 3.])
  rec = fix_report.recommend(r)
  assert rec['arm'] == 'loss_weights' and rec['confidence'] == pytest.approx(0.975)
  assert rec['arms'][0]['worst_class_vs_uniform']['high'] < 0  # the policy
  r['val_predictions'][2] = r['val_predictions'][0]  # loss weights no better: keep uniform
  assert fix_report.recommend(r)['arm'] == 'uniform'
  del r['val_predictions']
  assert fix_report.recommend(r) is None


def test_fix_config_files_load():
  """Every study of a per-class knob has a fix study: its shortcut sweep where it has one
  (crop, color), else its plain runlocal sweep (erase, smooth)."""
  for study in ('crop', 'color', 'erase', 'smooth'):
    c = configs.load(f'configs/fix.py:runlocal,study={study}')
    assert c.sweep.name == configs.ARM_SWEEP and c.data.name == 'planted'
    assert bool(c.data.planted_shortcut) == (study in ('crop', 'color'))
  with pytest.raises(ConfigError, match='no study config'):
    configs.load('configs/fix.py:study=nope')
