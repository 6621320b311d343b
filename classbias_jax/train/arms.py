"""The arms of a fix study (configs/fix.py): one sweep whose values are arms, not knob values.

A finished sweep's `policy.json` (written by `python -m classbias_jax.fix`) gives, for the
swept per-class knob, one value per class for each policy. Arm k of `ARMS` trains with:

  uniform       the best uniform value (best mean accuracy on validation) for every class
  off           the knob's off value for every class
  policy        the recommended policy's table (policy.json's `policy`), looked up by each
                image's label on device
  loss_weights  the uniform value, and per-class loss weights (class_weights.py, CLAM's rule)
  per_class     the per_class policy's table (fix.py), whichever is recommended
  protect       the protect policy's table

`sweep.values` are indices into ARMS; the seeds are common to all arms, so arm against arm
is a paired comparison, as value against value is in a knob sweep. An arm whose models
would be another arm's (the same table and loss: `off` when the best uniform value is the
off value) is trained once; config.json's `resolved.fix.same_as` names it.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from classbias_jax import configs, knob_table
from classbias_jax.errors import ConfigError
from classbias_jax.train import checkpoint
from classbias_jax.train.design import Sweep, knob_arrays


def _read_json(path: str, missing: str) -> dict:
  """A JSON object from `path`; ConfigError `missing` when absent, one line when unreadable."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise ConfigError(missing) from None
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable: {e}') from None
  if not isinstance(obj, dict):
    raise ConfigError(f'{path} holds {type(obj).__name__}, not a JSON object')
  return obj


def read_policy(workdir: str) -> tuple[dict, dict]:
  """(SWEEP_DIR/policy.json, SWEEP_DIR/config.json), the policy checked against the sweep
  it claims to come from (check_policy); a one-line ConfigError saying how to make it."""
  folder = os.path.expanduser(workdir)
  path = os.path.join(folder, configs.POLICY_FILE)
  policy = _read_json(path, f'no {path}: run `python -m classbias_jax.fix --workdir={workdir}` '
                            'first')
  sweep = _read_json(os.path.join(folder, 'config.json'),
                     f'no config.json in {workdir} beside {configs.POLICY_FILE}: a policy '
                     'is checked against the sweep trained there')
  check_policy(policy, sweep, path)
  return policy, sweep


_KEYS = ('knob', 'class_names', 'sweep_values', 'sweep_fingerprint', 'uniform', 'off',
         'policies', 'policy')


def _numbers(value, size: int | None, what: str) -> np.ndarray:
  """value as float64 [size] (size None: a single number); ConfigError unless numbers."""
  items = value if isinstance(value, list) else [value]
  if (size is None) == isinstance(value, list) or (size is not None and len(items) != size) \
      or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
    raise ConfigError(f'{what} must be {"a number" if size is None else f"{size} numbers"}, '
                      f'got {json.dumps(value)[:60]}')
  return np.asarray(items, np.float64)


def _in_range(knob: str, values: np.ndarray, what: str) -> None:
  low, high = knob_table.KNOBS[knob].low, knob_table.KNOBS[knob].high
  bad = values[~(np.isfinite(values) & (values >= low) & (values <= high))]
  if bad.size:
    raise ConfigError(f'{what} holds {knob} = {bad[0]:g}, outside [{low:g}, {high:g}]')


def _check_source(policy: dict, sweep: dict, path: str) -> None:
  """The policy names the sweep beside it: its knob, values, classes and fingerprint."""
  knob, where = policy['knob'], f'{path} does not come from the sweep beside it'
  if not isinstance(knob, str) or knob not in knob_table.KNOBS or not knob_table.KNOBS[knob].per_class:
    raise ConfigError(f'{path}: {knob} is not a per-class knob')
  if knob != sweep['sweep'].get('name'):
    raise ConfigError(f'{where} (a sweep of {sweep["sweep"].get("name")}, not of {knob})')
  if policy['sweep_values'] != sweep['sweep'].get('values'):
    raise ConfigError(f'{where}: its sweep values {policy["sweep_values"]} are not '
                      f'{sweep["sweep"].get("values")}')
  names = (sweep.get('resolved') or {}).get('class_names')
  if policy['class_names'] != names:
    raise ConfigError(f'{where}: its classes {json.dumps(policy["class_names"])[:60]} are '
                      f'not the sweep\'s {json.dumps(names)[:60]}')
  if policy['sweep_fingerprint'] != configs.fingerprint(sweep):
    raise ConfigError(f'{where}: the sweep was trained again with another config since; '
                      'run `python -m classbias_jax.fix` on it again')


def check_policy(policy: dict, sweep: dict, path: str) -> None:
  """ConfigError (one line naming `path`) unless `policy` is a policy.json written from the
  sweep whose config.json is `sweep`: every field present, the sweep's knob, values,
  class names and fingerprint (configs.fingerprint), a table of one value per class for
  each policy, every value inside its knob's range (knob_table.KNOBS)."""
  missing = [k for k in _KEYS if k not in policy]
  if missing or not isinstance(sweep.get('sweep'), dict):
    raise ConfigError(f'{path} lacks {", ".join(missing) or "its sweep"}: not a policy '
                      'file of `python -m classbias_jax.fix` (run it again)')
  _check_source(policy, sweep, path)
  knob, c = policy['knob'], len(policy['class_names'])
  uniform = _numbers(policy['uniform'], None, f'{path}: uniform')
  _in_range(knob, uniform, f'{path}: uniform')
  if float(uniform[0]) not in policy['sweep_values']:
    raise ConfigError(f'{path}: uniform {uniform[0]:g} is not a value of the sweep')
  if policy['off'] != knob_table.KNOBS[knob].off:
    raise ConfigError(f'{path}: off {policy["off"]} is not {knob}\'s off value '
                      f'{knob_table.KNOBS[knob].off}')
  if not isinstance(policy['policies'], dict) or not isinstance(policy['policy'], str) \
      or policy['policy'] not in policy['policies']:
    raise ConfigError(f'{path}: policy {policy["policy"]!r} names none of its policies')
  for name, table in policy['policies'].items():
    _in_range(knob, _numbers(table, c, f'{path}: policies.{name}'), f'{path}: policies.{name}')


# Fields that may differ between a sweep and its fix study: how the models are laid out
# and checkpointed, never what they train on or with.
_LAYOUT = ('strategy', 'mesh_models', 'mesh_data', 'chunk_size', 'loop', 'eval_every',
           'eval_batch_size', 'checkpoint_every', 'checkpoint_every_steps',
           'checkpoint_minutes', 'compile_cache', 'tensorboard', 'profile_steps')


def _recipe(config: dict, knob: str) -> dict:
  """The sections of a JSON config that define how each model trains, less the knob."""
  out = {k: config.get(k) for k in ('data', 'model', 'train', 'optim', 'aug', 'loss',
                                     'class_knobs')}
  out['train'] = {k: v for k, v in (out['train'] or {}).items() if k not in _LAYOUT}
  out['data'] = {k: v for k, v in (out['data'] or {}).items() if k != 'workers'}
  section, name = knob.split('.')
  out[section] = {k: v for k, v in (out[section] or {}).items() if k != name}
  return out


def check_recipe(config, sweep: dict, knob: str) -> None:
  """Raises ConfigError when the fix study would train otherwise than the sweep whose
  config.json is `sweep` (data, model, epochs, optimiser, other knobs); seeds may differ."""
  fields = checkpoint.differing_fields(_recipe(sweep, knob),
                                       _recipe(checkpoint.config_json(config), knob))
  if fields:
    raise ConfigError(f'the fix study must train as the sweep in {config.fix.policy_from} '
                      f'did; it differs in {", ".join(fields[:4])}'
                      f'{", ..." * (len(fields) > 4)}')


def _check_pairs(config, knob: str, by_arm: dict) -> None:
  """Each arm's table against the fix study's value of the knob it pairs with
  (knob_table.pairs()): a minimum above the fixed maximum, or the reverse, is an error."""
  for low, high in knob_table.pairs():
    if knob in (low, high):
      other = high if knob == low else low
      fixed = [float(knob_table.get_field(config, other))]
      for arm, table in by_arm.items():
        lows, highs = (list(table), fixed) if knob == low else (fixed, list(table))
        knob_table.check_pair(low, lows, high, highs, f' in the {arm} arm\'s table')


def tables(policy: dict) -> dict[str, np.ndarray]:
  """Arm name -> the knob's value for each class [C] (float64)."""
  c = len(policy['class_names'])
  out = {'uniform': np.full(c, policy['uniform']), 'loss_weights': np.full(c, policy['uniform'])}
  if policy['off'] is not None:
    out['off'] = np.full(c, float(policy['off']))
  for name, table in policy['policies'].items():
    out[name] = np.asarray(table, np.float64)
  if policy.get('policy') in policy['policies']:
    out['policy'] = out[policy['policy']]
  return out


def _distinct(sweep, by_arm: dict, arm_names: list[str]):
  """(the sweep less each arm that would train another arm's models, {dropped: kept}).
  Two arms with the same table and loss train the same models: their seeds are common."""
  keep, same_as, kinds = [], {}, {}
  for value, arm in zip(sweep.values, arm_names):
    kind = (arm == 'loss_weights', tuple(by_arm[arm]))
    if kind in kinds:
      same_as[arm] = kinds[kind]
    else:
      kinds[kind] = arm
      keep.append(value)
  return Sweep(sweep.name, np.asarray(keep, np.float64), sweep.seeds), same_as


def plan(config, sweep, num_classes: int) -> tuple[Any, dict, dict]:
  """(sweep, knobs, info) of a fix study. The sweep drops an arm that would train the
  models of an earlier arm again (`off` when the best uniform value is the off value, a
  policy that changes no class); info['same_as'] names it. The policy's knob becomes a
  table [M, C] (each model its arm's), the loss-weight rate is on for the loss_weights
  arm; every other knob is as in any plan (plan.knob_arrays). info is what config.json
  records."""
  policy, sweep_json = read_policy(config.fix.policy_from)
  check_recipe(config, sweep_json, policy['knob'])
  short = knob_table.short_name(policy['knob'])
  if len(policy['class_names']) != num_classes:
    raise ConfigError(f'policy.json has {len(policy["class_names"])} classes, the data '
                      f'{num_classes}: the fix study must train on the sweep\'s dataset')
  if short in config.get('class_knobs', {}):
    raise ConfigError(f'class_knobs.{short} and a fix study of {policy["knob"]} conflict')
  by_arm, arm_names = tables(policy), configs.arm_names(sweep.values)
  _check_pairs(config, policy['knob'], by_arm)
  absent = [a for a in arm_names if a not in by_arm]
  if absent:
    raise ConfigError(f'policy.json has no table for arm {", ".join(absent)}')
  sweep, same_as = _distinct(sweep, by_arm, arm_names)
  knobs, arm_names = knob_arrays(config, sweep, num_classes), configs.arm_names(sweep.values)
  model_arms = [arm_names[v] for v in sweep.value_index]
  knobs[short] = np.stack([by_arm[a] for a in model_arms]).astype(np.float32)
  weighted = np.asarray([a == 'loss_weights' for a in model_arms])
  knobs['class_weight_rate'] = np.where(weighted, np.float32(config.fix.class_weight_rate),
                                        knobs['class_weight_rate']).astype(np.float32)
  uniform = by_arm['uniform']
  info = {'policy_from': config.fix.policy_from, 'knob': policy['knob'], 'arms': arm_names,
          'same_as': same_as, 'uniform': policy['uniform'], 'off': policy['off'],
          'policy': policy.get('policy'),
          'tables': {a: by_arm[a].tolist() for a in arm_names},
          'changed': {a: [n for n, x, u in zip(policy['class_names'], by_arm[a], uniform)
                          if x != u] for a in arm_names}}
  return sweep, knobs, info
