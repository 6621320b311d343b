"""One family per report, intervals within what accuracy allows, the power statement, and
what 1- and 2-seed reports say (classbias_jax.audit.stats, analysis, report)."""
from __future__ import annotations

import numpy as np
import pytest

from classbias_jax import report
from classbias_jax.audit import analysis, effects
from classbias_jax.audit import stats
from test_analysis import make_results, planted


def test_bh_keeps_nan_out_of_the_family():
  q = stats.bh_qvalues([[0.01, np.nan], [0.03, 0.04]])
  assert np.isnan(q[0, 1])
  np.testing.assert_allclose(q[~np.isnan(q)], [0.03, 0.04, 0.04])  # .01*3, .03*3/2 > .04


def test_one_family_across_values():
  # A p-value that passes alone (q = 0.04 in its value's family of 1) fails in a family
  # of 3 where the others are null.
  comps = [{'p': np.array([0.04]), 'effect': np.array([-0.1])},
           {'p': np.array([0.9]), 'effect': np.array([0.0])},
           {'p': np.array([0.8]), 'effect': np.array([0.0])}]
  out = effects.flag_family(comps)
  assert out[0]['q'][0] == pytest.approx(0.12) and not out[0]['hurt'][0]
  assert out[0]['level'] == pytest.approx(0.05 / 3)


def test_interval_stays_within_what_accuracy_allows():
  # Two seeds that disagree wildly: a class at 100% loses everything in one run only.
  labels = np.zeros(20, int)
  diff = np.array([-np.ones(20), np.r_[-np.ones(19), 0.0]])
  comp = effects.compare(diff, labels, 1, reference_accuracy=np.array([1.0]))
  assert comp['low'][0] >= -1.0 and comp['high'][0] <= 0.0
  assert comp['low'][0] <= comp['effect'][0] <= comp['high'][0]


def test_one_seed_lists_nothing_and_says_why():
  out = analysis.analyze(planted(seeds=1), reference=0.0, num_bootstrap=20, num_splits=1)
  entry = out['values'][1]
  assert out['inference']['status'] == 'conditional'
  assert entry['hurt'] == [] and entry['helped'] == []
  assert all(p is None for p in entry['per_class']['p'])
  assert entry['per_class']['effect'][0] == pytest.approx(-0.5)  # still shown
  text = report.render(out, {})
  assert 'conditional on these runs' in text and 'not tested' in text
  assert 'borrow' not in text and '## Power' not in text


def test_two_seed_report_says_what_it_cannot_conclude():
  out = analysis.analyze(planted(seeds=2), reference=0.0, num_bootstrap=20, num_splits=1)
  assert out['inference'] == {'num_seeds': 2, 'status': 'limited', 'seeds_for_full_test': 4}
  text = report.render(out, {})
  assert 'With 2 seeds' in text and 'may still be hurt' in text and '1 degree of freedom' in text
  assert '## Power' in text and 'To detect a 5-point drop' in text


def test_power_falls_with_seeds_and_states_seeds_needed():
  rng = np.random.default_rng(0)
  acc = np.clip(0.85 + rng.normal(0, 0.02, (2, 8, 5)), 0, 1)
  out = analysis.analyze(make_results(acc, images_per_class=400, sweep_values=[0.0, 1e-3],
                                      binomial=True), reference=0.0, num_bootstrap=10,
                         num_splits=1)
  pc = out['values'][1]['per_class']
  assert all(0 < m < 0.3 for m in pc['min_detectable_drop'])
  assert all(2 <= k <= 1024 for k in pc['seeds_needed'])
  comp = {k: np.array([v]) for k, v in (('seed', 4e-4), ('image', 0.0), ('res', 0.2))}
  mde = [stats.detectable_effect(comp, np.array([400.0]), s, 0.01)[0] for s in (2, 4, 16)]
  assert mde[0] > mde[1] > mde[2]
  k = stats.seeds_needed(comp, np.array([400.0]), mde[1], 0.01)[0]
  assert k == 4
