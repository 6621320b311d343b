"""Per-class statistics on small hand-built results (classbias_jax.audit.analysis)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from classbias_jax.audit import analysis, effects, replication
from classbias_jax.audit.stats import bh_qvalues, crossed_effect_test
from classbias_jax.errors import ConfigError


def make_results(accuracy, receiver=None, images_per_class=50, sweep_values=None,
                 sweep_name='optim.weight_decay', seed=0, binomial=False):
  """Results whose models get round(accuracy * n) images of each class right.

  With binomial=True each image is right with probability `accuracy` instead.

  accuracy [V, S, C]; receiver int [V, C]: the class that a model at value v predicts for
  the images of class c it gets wrong (default c + 1). Which images are right is drawn at
  random for every model, so classes with equal accuracy still differ image by image.
  """
  accuracy = np.asarray(accuracy, np.float64)
  v_count, s_count, c_count = accuracy.shape
  n = images_per_class
  if receiver is None:
    receiver = np.tile((np.arange(c_count) + 1) % c_count, (v_count, 1))
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(c_count), n).astype(np.int32)
  predictions = np.empty((v_count, s_count, labels.size), np.int32)
  for v in range(v_count):
    for s in range(s_count):
      for c in range(c_count):
        right = (rng.random(n) < accuracy[v, s, c] if binomial
                 else rng.permutation(n) < round(accuracy[v, s, c] * n))
        predictions[v, s, c * n:(c + 1) * n] = np.where(right, c, receiver[v, c])
  correct = predictions == labels
  return {
      'per_class_accuracy': correct.reshape(v_count, s_count, c_count, n).mean(-1)
      .astype(np.float32),
      'mean_accuracy': correct.mean(-1).astype(np.float32),
      'test_labels': labels,
      'test_predictions': predictions,
      'sweep_name': np.asarray(sweep_name),
      'sweep_values': np.asarray(sweep_values if sweep_values is not None
                                 else [0.0, 5e-4, 5e-3][:v_count], np.float64),
      'seeds': np.arange(s_count),
      'class_names': np.asarray([f'c{c}' for c in range(c_count)]),
  }


def planted(seeds=4, classes=6, seed=0):
  """Value 0: every class ~80%, class 0 at 90%. Value 1: class 0 falls to 40%, its lost
  images going to class 3; class 5 rises to 100%. Accuracies wobble +-5 points by seed."""
  rng = np.random.default_rng(seed)
  acc = np.clip(0.8 + rng.choice([-0.06, -0.02, 0.02, 0.06], size=(2, seeds, classes)), 0, 1)
  acc[0, :, 0] = 0.9
  acc[1, :, 0] = 0.4
  acc[1, :, 5] = 1.0
  receiver = np.tile((np.arange(classes) + 1) % classes, (2, 1))
  receiver[1, 0] = 3
  return make_results(acc, receiver, sweep_values=[0.0, 1e-3], seed=seed)


# ------------------------------------------------------------------------ tests proper

def test_bh_qvalues_match_hand_values():
  # Sorted p: .01 .03 .04 .20 -> p*m/rank: .04 .06 .0533 .20 -> running min from the top.
  q = bh_qvalues([0.01, 0.04, 0.03, 0.20, np.nan])
  np.testing.assert_allclose(q[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.20])
  assert np.isnan(q[4])


def test_crossed_test_matches_hand_anova():
  # One class, 2 seeds x 4 images. Grand mean 1/2; seed means 3/4, 1/4; image means
  # 1, 1/2, 1/2, 0. MS_seed = 4 * (1/16 + 1/16) / 1 = 1/2, MS_image = 2 * (1/4 + 1/4) / 3
  # = 1/3, SS_total = 8/4 = 2, MS_res = (2 - 1/2 - 1) / 3 = 1/6. Both components positive:
  # S n Var = 1/2 + 1/3 - 1/6 = 2/3, Var = 1/12; Satterthwaite df = (2/3)^2 /
  # ((1/2)^2/1 + (1/3)^2/3 + (1/6)^2/3) = 1.5, capped at the seed term's S - 1 = 1.
  diff = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
  out = crossed_effect_test(diff, np.zeros(4, int), 1)
  assert out['effect'][0] == pytest.approx(0.5)
  assert out['se'][0] == pytest.approx(np.sqrt(1 / 12))
  assert out['df'][0] == pytest.approx(1.0)
  assert out['p'][0] == pytest.approx(2 * stats.t.sf(0.5 / np.sqrt(1 / 12), 1.0))
  assert out['seed'][0] == pytest.approx((1 / 2 - 1 / 6) / 4)  # (MS_seed - MS_res) / n
  assert out['image'][0] == pytest.approx((1 / 3 - 1 / 6) / 2)  # (MS_image - MS_res) / S


def test_crossed_test_edge_cases():
  labels = np.array([0, 0, 0, 1, 1, 1])
  diff = np.array([[0, 0, 0, -1, -1, -1]] * 2)  # class 0 unchanged, class 1 always lost
  out = crossed_effect_test(diff, labels, 3)
  assert out['p'][0] == 1.0
  assert out['p'][1] == pytest.approx(0.25)  # exact sign flip over 3 images: 2 / 2^3
  assert np.isnan(out['p'][2])  # no images of class 2


def test_planted_drop_is_hurt_and_stable_classes_are_not():
  out = analysis.analyze(planted(), reference=0.0, num_bootstrap=100, num_splits=2)
  at_value = out['values'][1]
  assert at_value['hurt'] == ['c0']
  assert at_value['helped'] == ['c5']
  assert at_value['per_class']['effect'][0] == pytest.approx(-0.5)
  assert at_value['per_class']['q'][0] < 0.05
  assert out['values'][0]['hurt'] == [] and out['values'][0]['per_class']['p'][0] == 1.0
  assert out['reference'] == {'value': 0.0, 'index': 0, 'chosen_by': 'given'}
  json.dumps(out, allow_nan=False)


def test_confusion_flow_sends_lost_images_to_planted_receiver():
  out = analysis.analyze(planted(), reference=0.0, num_bootstrap=50, num_splits=1)
  flow = out['values'][1]['confusion_flow']
  assert [f['class'] for f in flow] == ['c0']
  # 90% -> 40% right; wrong images went to c1 (10%) and now go to c3 (60%).
  assert flow[0]['lost'] == pytest.approx(0.5)
  assert flow[0]['to'] == [{'class': 'c3', 'fraction': pytest.approx(0.6)}]


def test_replication_of_a_real_effect_and_of_noise():
  rng = np.random.default_rng(3)
  acc = np.full((2, 8, 40), 0.7) + rng.choice([-0.05, 0.05], size=(2, 8, 40))
  acc[1, :, :8] -= 0.35  # eight classes really hurt
  results = make_results(acc, images_per_class=100, sweep_values=[0.0, 1e-3])
  out = analysis.analyze(results, reference=0.0, num_bootstrap=20, num_splits=3)
  rep = out['replication']['values'][0]
  assert rep['flagged_per_half'] >= 7
  assert rep['replication_rate'] >= 0.9
  assert 0.7 < rep['shrinkage'] < 1.3
  assert sorted(out['values'][1]['hurt']) == sorted(f'c{c}' for c in range(8))


def test_no_effect_is_flagged_at_most_five_percent_of_the_time():
  # Every model's class accuracy has a run-wide wobble and per-image Bernoulli noise. With
  # 3 seeds the test is conservative here: each class's seed term keeps its own 2 df.
  rng = np.random.default_rng(4)
  acc = 0.7 + rng.choice([-0.04, 0.0, 0.04], size=(2, 3, 300))
  results = make_results(acc, images_per_class=40, seed=4, binomial=True)
  out = analysis.analyze(results, reference=0.0, num_bootstrap=10, num_splits=1)
  p = np.array(out['values'][1]['per_class']['p'])
  assert np.mean(p < 0.05) <= 0.06
  assert out['values'][1]['hurt'] == [] and out['values'][1]['helped'] == []


def test_diverged_models_are_left_out_with_a_warning():
  results = planted(seeds=6)
  results['diverged'] = np.zeros((2, 6), bool)
  results['diverged'][1, 0] = True
  results['test_predictions'][1, 0] = 0  # garbage from the diverged model
  out = analysis.analyze(results, reference=0.0, num_bootstrap=50, num_splits=1)
  expected = np.mean([results['per_class_accuracy'][1, s, 2] for s in range(1, 6)])
  assert out['values'][1]['accuracy'][2] == pytest.approx(expected, abs=1e-6)
  assert out['values'][1]['num_models'] == 5
  assert out['excluded_models'] == [{'value': 1e-3, 'seed': 0}]
  assert len(out['warnings']) == 1 and 'diverged' in out['warnings'][0]
  assert out['values'][1]['hurt'] == ['c0']


def test_reference_defaults_to_best_mean_and_off_value_is_added():
  acc = np.full((3, 2, 4), 0.6)
  acc[1] = 0.8  # best mean at the middle value
  out = analysis.analyze(make_results(acc), num_bootstrap=10, num_splits=1)
  assert out['reference'] == {'value': 5e-4, 'index': 1, 'chosen_by': 'best mean accuracy'}
  assert out['off_reference'] == {'value': 0.0, 'index': 0}
  assert 'against_off' in out['values'][2]
  with pytest.raises(ConfigError, match='not a sweep value'):
    analysis.analyze(make_results(acc), reference=0.1, num_bootstrap=10)


@pytest.mark.parametrize('name, values, expected', [
    ('optim.weight_decay', [0.0, 1e-4], 0), ('aug.crop_scale_min', [0.08, 0.5, 1.0], 2),
    ('aug.color_strength', [0.0, 0.5], 0), ('aug.erase_prob', [0.25, 0.5], None),
    ('optim.learning_rate', [0.0, 0.1], None)])
def test_off_index(name, values, expected):
  assert analysis.off_index(name, np.array(values)) == expected


def test_summary_curves_by_hand():
  accuracy = np.arange(1, 11)[None, :] / 10  # classes at 10%, 20%, ..., 100%
  images = np.array([2] + [1] * 9)
  out = analysis.summary_curves(accuracy, images)
  assert out['mean'][0] == pytest.approx(5.6 / 11)  # class 0 counted twice
  assert out['class_mean'][0] == pytest.approx(0.55)
  assert out['worst_class'][0] == pytest.approx(0.1) and out['worst_class_index'][0] == 0
  assert out['p10_class'][0] == pytest.approx(0.19)  # 0.1 + 0.9 * (0.2 - 0.1)


def test_bootstrap_intervals():
  acc = np.full((1, 3, 3), 0.6)
  acc[0, :, 0], acc[0, :, 1] = 1.0, 0.0
  out = analysis.analyze(make_results(acc, images_per_class=40), num_bootstrap=200,
                         num_splits=1)['values'][0]
  assert out['accuracy_low'][:2] == [1.0, 0.0] and out['accuracy_high'][:2] == [1.0, 0.0]
  assert out['accuracy_low'][2] < 0.6 < out['accuracy_high'][2]
  assert out['accuracy_high'][2] - out['accuracy_low'][2] < 0.35
  assert out['mean_accuracy_low'] <= out['mean_accuracy'] <= out['mean_accuracy_high']


# ------------------------------------------------- run-to-run variance pooled over values

def _sweep(values, seeds=4, louder=None, classes=2, images=200, seed=0):
  """Results of a null sweep: class accuracy ~80% with a run sd of 3 points (logit shifts),
  `louder` {value index: factor} multiplies that sd at a value."""
  rng = np.random.default_rng(seed)
  sd = np.full((values, 1, 1), 0.2)
  for v, factor in (louder or {}).items():
    sd[v] *= factor
  logit = 1.4 + rng.normal(0, 1, (1, seeds, classes)) * 0.2 + rng.normal(
      0, 1, (values, seeds, classes)) * sd
  acc = 1 / (1 + np.exp(-logit))
  return make_results(acc, images_per_class=images, sweep_values=np.arange(values) * 1e-3,
                      binomial=True, seed=seed)


def _pair(results, v, r, run_variance):
  labels = results['test_labels']
  correct = results['test_predictions'] == labels
  valid = np.ones(correct.shape[:2], bool)
  per_seed = analysis.class_accuracy(correct, labels, 2)
  return effects.compare(replication.paired_difference(correct, valid, v, r), labels, 2, None,
                          effects.pair_pool(per_seed, valid, labels, v, r, run_variance))


def test_two_values_pool_nothing_and_match_the_pairwise_test():
  r = _sweep(2)
  pooled, pairwise = _pair(r, 1, 0, 'pooled'), _pair(r, 1, 0, 'pairwise')
  for key in ('effect', 'se', 'df', 'p', 'seed'):
    np.testing.assert_array_equal(pooled[key], pairwise[key])
  assert np.all(pooled['run_values'] == 2) and np.all(np.isnan(pooled['homogeneity_p']))


def test_pool_is_the_value_seed_interaction_of_logit_accuracy():
  # 5 values x 4 seeds: the seed term comes from (5 - 1)(4 - 1) = 12 df, brought back to
  # the accuracy scale at the pair's accuracies; the t test's df are bounded by those 12.
  r = _sweep(5, seed=3)
  out = _pair(r, 1, 0, 'pooled')
  labels = r['test_labels']
  acc = analysis.class_accuracy(r['test_predictions'] == labels, labels, 2)  # [V, S, C]
  k = (acc * 200 + 0.5) / 201
  logit = np.log(k / (1 - k))
  resid = logit - logit.mean(0) - logit.mean(1, keepdims=True) + logit.mean((0, 1))
  slope2 = ((k[1] * (1 - k[1])) ** 2).mean(0) + ((k[0] * (1 - k[0])) ** 2).mean(0)
  seed_var = (resid ** 2).sum((0, 1)) / 12 * slope2  # variance of a seed's difference
  pooled = out['run_values'] == 5
  assert pooled.any()
  np.testing.assert_allclose(out['seed'][pooled], np.maximum(
      seed_var - out['res'] / 200, 0)[pooled], rtol=1e-9)
  assert np.all(out['df'][pooled] <= 12) and np.all(out['df'][pooled] > 3)


def test_a_pair_that_varies_more_than_the_rest_keeps_its_own_variance():
  r = _sweep(6, seeds=8, louder={1: 8.0}, seed=5)
  out = _pair(r, 1, 0, 'pooled')
  assert np.all(out['run_values'] == 2) and np.all(out['homogeneity_p'] < 0.01)
  np.testing.assert_array_equal(out['se'], _pair(r, 1, 0, 'pairwise')['se'])
  calm = _pair(r, 2, 0, 'pooled')  # the louder value only makes the pool larger
  assert np.all(calm['homogeneity_p'] > 0.2)


def test_analysis_records_which_run_variance_ran_and_why():
  r = _sweep(4, seed=1)
  out = analysis.analyze(r, reference=0.0, num_bootstrap=10, num_splits=1)
  run = out['run_variance']
  assert run['method'] == 'pooled' and run['values_pooled'] == 4
  assert run['num_pooled'] + run['num_own'] == 6  # 3 values x 2 classes
  assert 'value x seed interaction' in run['why']
  pair = analysis.analyze(r, reference=0.0, num_bootstrap=10, num_splits=1,
                          run_variance='pairwise')
  assert pair['run_variance']['method'] == 'pairwise' and pair['run_variance']['num_pooled'] == 0
  assert all(x == 2 for v in pair['values'] for x in v['per_class']['run_values'])
  with pytest.raises(ConfigError, match='run_variance'):
    analysis.analyze(r, run_variance='seedwise')


def test_a_broken_value_leaves_the_pool_of_the_sound_ones():
  # Value 4 swings the classes by 60x the run sd (a weight decay where training breaks
  # down): the comparisons among values 0-3 pool those four, not five.
  r = _sweep(5, seeds=4, louder={4: 60.0}, seed=2)
  out = _pair(r, 1, 0, 'pooled')
  np.testing.assert_array_equal(out['run_values'], 4)
  assert np.all(_pair(_sweep(5, seeds=4, seed=2), 1, 0, 'pooled')['run_values'] == 5)
