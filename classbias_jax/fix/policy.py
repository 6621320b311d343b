"""Policies that fix what a sweep's audit found: per-class values of its knob, chosen on the
validation split (never on test). `python -m classbias_jax.fix` writes them to
SWEEP_DIR/policy.json.

  per_class  each class keeps the best uniform value u (the value with the best mean
             validation accuracy) unless its validation evidence for another value passes
             the report's test against u (effects.compare: the class's own variance over
             seeds and images, its run-to-run part pooled over the sweep's values as in
             the report; q < ALPHA in one Benjamini-Hochberg family over every class at
             every other value); then it takes, of those values, the one with
             the largest gain. Weak evidence shrinks a class all the way to u (a
             preliminary-test rule), so noise alone leaves the policy uniform.
  protect    u for every class, except the classes that u hurts against the knob's off
             value on validation (same test and family): those get the off value
             (Kirichenko et al. 2023's simple fix).
A configs/fix.py study then trains the arms (arms.py) and its report tests them on test.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from classbias_jax import configs, files, knob_table, results
from classbias_jax.audit import analysis, effects
from classbias_jax.errors import ConfigError, ResultsError
from classbias_jax.audit.replication import paired_difference

POLICIES = ('per_class', 'protect')



def validation_correct(results: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(val_labels, whether each model got each validation image right [V, S, Nv]); a
  ResultsError naming the fix when the run had no validation split."""
  if 'val_predictions' not in results:
    raise ResultsError('the sweep has no validation predictions: a policy is chosen on '
                       'validation, never on test; rerun the sweep with '
                       '--config.data.val_fraction=0.1')
  labels = np.asarray(results['val_labels'])
  return labels, np.asarray(results['val_predictions']) == labels


def _knob(results: Mapping[str, Any]) -> tuple[str, float | None]:
  name = str(results['sweep_name'])
  knob = knob_table.KNOBS.get(name)
  if knob is None or not knob.per_class:
    per_class = ', '.join(n for n, k in knob_table.KNOBS.items() if k.per_class)
    raise ConfigError(f'{name} cannot take a value per class; a fix needs a sweep of one '
                      f'of {per_class}')
  return name, knob.off


def choose_policy(results: Mapping[str, Any], alpha: float = analysis.ALPHA,
                  run_variance: str = analysis.RUN_VARIANCE[0]) -> dict[str, Any]:
  """Both policies for a finished sweep (see the module docstring), with their evidence.

  run_variance: where each class's run-to-run variance comes from (analysis.RUN_VARIANCE).
  """
  knob, off_value = _knob(results)
  labels, correct = validation_correct(results)
  names = [str(n) for n in results['class_names']]
  values = np.asarray(results['sweep_values'], np.float64)
  c = len(names)
  valid, notes = analysis.valid_models(results)
  per_seed = analysis.class_accuracy(correct, labels, c)  # [V, S, C]
  accuracy = analysis.masked_seed_mean(per_seed, valid)  # [V, C]
  mean = analysis.summary_curves(accuracy, np.bincount(labels, minlength=c))['mean']
  if np.all(np.isnan(mean)):
    raise ResultsError('every model of the sweep diverged: no policy to choose')
  u = int(np.nanargmax(mean))
  others = [v for v in range(len(values)) if v != u]
  comps = []
  for v in others:
    seeds = valid[v] & valid[u]
    comps.append(effects.compare(paired_difference(correct, valid, v, u), labels, c,
                                  per_seed[u, seeds].mean(0) if seeds.any() else None,
                                  effects.pair_pool(per_seed, valid, labels, v, u, run_variance)))
  flagged = dict(zip(others, effects.flag_family(comps, alpha)))
  # per_class: the largest significant gain over u, else u.
  gain = np.full((len(values), c), -np.inf)
  for v, comp in flagged.items():
    gain[v] = np.where(comp['helped'], comp['effect'], -np.inf)
  best = np.where(np.isfinite(gain.max(0)), gain.argmax(0), u)
  off = analysis.off_index(knob, values)
  protect = np.full(c, values[u])
  if off is not None and off != u:
    protect = np.where(flagged[off]['helped'], values[off], values[u])
  q = lambda v: [None if v == u else analysis.json_floats(flagged[v]['q'])[k] for k in range(c)]
  return {
      'knob': knob, 'class_names': names, 'sweep_values': values.tolist(),
      'uniform': float(values[u]), 'off': None if off_value is None else float(off_value),
      'run_variance': run_variance,
      'off_in_sweep': off is not None, 'alpha': alpha,
      'num_seeds': int(valid.sum(1).min()), 'warnings': notes,
      'policies': {'per_class': values[best].tolist(), 'protect': protect.tolist()},
      'evidence': {
          'validation_mean_accuracy': analysis.json_floats(mean),
          'validation_accuracy': [analysis.json_floats(a) for a in accuracy],
          'best_value': values[best].tolist(),
          'gain': [None if b == u else analysis.json_floats(flagged[b]['effect'])[k]
                   for k, b in enumerate(best)],
          'q': {f'{values[v]:g}': q(v) for v in others}},
      'fdr': {'method': 'Benjamini-Hochberg', 'num_tests': int(sum(
          np.sum(~np.isnan(x['p'])) for x in comps)),
          'family': f'every class at every value other than the uniform {values[u]:g}, '
                    'against it, on validation'},
  }


def table(policy: Mapping[str, Any]) -> list[str]:
  """The policies as a markdown table, one row per class (values the policy changed in
  bold), for policy.json and the report."""
  u = policy['uniform']
  ev = policy['evidence']
  ui = policy['sweep_values'].index(u)
  rows = ['| class | validation accuracy at uniform | per_class | gain | protect |',
          '|---|---|---|---|---|']
  for k, name in enumerate(policy['class_names']):
    cell = lambda x: f'**{x:g}**' if x != u else f'{x:g}'  # noqa: E731
    acc, gain = ev['validation_accuracy'][ui][k], ev['gain'][k]
    rows.append(f'| {name} | {"n/a" if acc is None else f"{100 * acc:.1f}"} | '
                f'{cell(policy["policies"]["per_class"][k])} | '
                f'{"" if gain is None else f"{100 * gain:+.1f}"} | '
                f'{cell(policy["policies"]["protect"][k])} |')
  return rows


def sweep_config(workdir: str) -> dict:
  """WORKDIR/config.json, the sweep's config (ResultsError when absent or unreadable: a
  policy names the sweep it came from by its fingerprint, configs.fingerprint)."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise ResultsError(f'no config.json in {workdir}: a policy comes from a sweep trained '
                       'there') from None
  except (OSError, ValueError) as e:
    raise ResultsError(f'{path} is unreadable: {e}') from None
  if not isinstance(config, dict) or not isinstance(config.get('sweep'), dict):
    raise ResultsError(f'{path} is not a config.json of classbias_jax.main')
  return config


def write_policy(workdir: str, recommend: str = 'per_class', alpha: float = analysis.ALPHA) -> dict:
  """Chooses the policies of the sweep in WORKDIR and writes WORKDIR/policy.json whole,
  with the fingerprint of the sweep's config.json (a fix study checks it, arms.py)."""
  arrays, config = results.load_results(workdir), sweep_config(workdir)
  named = (config['sweep'].get('name'), config['sweep'].get('values'))
  if named != (str(arrays['sweep_name']), arrays['sweep_values'].tolist()):
    raise ResultsError(f'{workdir}: config.json is a sweep of {named[0]} over {named[1]}, '
                       f'results.npz of {arrays["sweep_name"]} over '
                       f'{arrays["sweep_values"].tolist()}: they come from different studies')
  policy = choose_policy(arrays, alpha)
  policy['sweep_fingerprint'] = configs.fingerprint(config)
  policy['policy'] = recommend
  policy['sweep'] = os.path.abspath(workdir)
  policy['table'] = table(policy)
  files.write_json(os.path.join(workdir, configs.POLICY_FILE), policy)
  return policy


def describe_policy(policy: Mapping[str, Any]) -> str:
  u = policy['uniform']
  lines = [f'{policy["knob"]}: best uniform value {u:g} on validation '
           f'({policy["num_seeds"]} seeds)']
  for name, values in policy['policies'].items():
    changed = [f'{n}={x:g}' for n, x in zip(policy['class_names'], values) if x != u]
    lines.append(f'  {name}: ' + (', '.join(changed) if changed else f'{u:g} for every class'))
  if policy['num_seeds'] < 2:
    lines.append('  one seed: no class has evidence against the uniform value')
  if any(x != u for values in policy['policies'].values() for x in values):
    # the evidence comes from models that gave every class the same value
    lines.append('  a class given its own value can fare otherwise than in the uniform '
                 'sweep: train the arms (configs/fix.py) and use the arm its report '
                 'recommends')
  return '\n'.join(lines)
