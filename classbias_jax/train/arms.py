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

from classbias_jax import configs
from classbias_jax.errors import ConfigError
from classbias_jax.train import checkpoint
from classbias_jax.train.design import Sweep, knob_arrays

def read_policy(workdir: str) -> dict:
  """SWEEP_DIR/policy.json, or a one-line ConfigError saying how to make it."""
  path = os.path.join(os.path.expanduser(workdir), configs.POLICY_FILE)
  try:
    with open(path) as f:
      policy = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f'no {path}: run `python -m classbias_jax.fix --workdir={workdir}` '
                      'first') from None
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable: {e}') from None
  missing = [k for k in ('knob', 'class_names', 'uniform', 'off', 'policies') if k not in policy]
  if missing:
    raise ConfigError(f'{path} lacks {", ".join(missing)}: not a policy file')
  return policy


# Fields that may differ between a sweep and its fix study: how the models are laid out
# and checkpointed, never what they train on or with.
_LAYOUT = ('strategy', 'mesh_models', 'mesh_data', 'chunk_size', 'loop', 'eval_every',
           'eval_batch_size', 'checkpoint_every', 'checkpoint_every_steps',
           'checkpoint_minutes', 'compile_cache')


def _recipe(config: dict, knob: str) -> dict:
  """The sections of a JSON config that define how each model trains, less the knob."""
  out = {k: config.get(k) for k in ('data', 'model', 'train', 'optim', 'aug', 'loss',
                                     'class_knobs')}
  out['train'] = {k: v for k, v in (out['train'] or {}).items() if k not in _LAYOUT}
  out['data'] = {k: v for k, v in (out['data'] or {}).items() if k != 'workers'}
  section, name = knob.split('.')
  out[section] = {k: v for k, v in (out[section] or {}).items() if k != name}
  return out


def check_recipe(config, policy: dict) -> None:
  """Raises ConfigError when the fix study would train otherwise than the sweep its policy
  came from (data, model, epochs, optimiser, other knobs); seeds may differ."""
  path = os.path.join(os.path.expanduser(config.fix.policy_from), 'config.json')
  try:
    with open(path) as f:
      sweep = json.load(f)
  except (OSError, ValueError):
    return  # a policy.json without its sweep's config: nothing to compare
  fields = checkpoint.differing_fields(_recipe(sweep, policy['knob']),
                                       _recipe(checkpoint.config_json(config), policy['knob']))
  if fields:
    raise ConfigError(f'the fix study must train as the sweep in {config.fix.policy_from} '
                      f'did; it differs in {", ".join(fields[:4])}'
                      f'{", ..." * (len(fields) > 4)}')


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
  policy = read_policy(config.fix.policy_from)
  check_recipe(config, policy)
  short = configs.short_name(policy['knob'])
  if policy['knob'] not in configs.KNOBS or not configs.KNOBS[policy['knob']].per_class:
    raise ConfigError(f'policy.json: {policy["knob"]} is not a per-class knob')
  if len(policy['class_names']) != num_classes:
    raise ConfigError(f'policy.json has {len(policy["class_names"])} classes, the data '
                      f'{num_classes}: the fix study must train on the sweep\'s dataset')
  if short in config.get('class_knobs', {}):
    raise ConfigError(f'class_knobs.{short} and a fix study of {policy["knob"]} conflict')
  by_arm, arm_names = tables(policy), configs.arm_names(sweep.values)
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
