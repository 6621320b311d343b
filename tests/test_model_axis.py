"""Model-axis strategies: same numbers as unroll, sharding over devices, the rule, auto's
cache, donation, the scan loop, and bf16 compute with float32 master weights."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, host_devices_env, init_states, tiny_config, tiny_plan

from classbias_jax.train import model_axis
from classbias_jax.train import one_model
from classbias_jax.train import trainer
from classbias_jax.errors import ConfigError
from classbias_jax.models import create_model
from classbias_jax.tuning import strategy as tuning


def tiny_steps(strategy, steps=2, dtype=jnp.float32, config=None, materialize=None):
  """(state, metrics) after `steps` steps of 4 tiny models on random 8x8 images."""
  config = config or tiny_config(**{'seeds': 2, 'train__batch_size': 16,
                                    'aug__flip_prob': 0.5, 'aug__pad_crop': 2})
  plan = tiny_plan(config, strategy)
  model = create_model('tiny', 10, dtype=dtype)
  if materialize is not None:
    model = model.clone(materialize=int(materialize))
  keys = plan.keys()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 8, 8, 1), np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  put = lambda tree: model_axis.put_models(tree, strategy)
  state = put(init_states(plan, model))
  knobs = put({k: jnp.asarray(v) for k, v in plan.knobs.items()})
  perms = put(one_model.epoch_permutations(keys['data'], 0, 64))
  one = one_model.make_train_step(plan, model)
  step = model_axis.jit(model_axis.lift_train_step(one, strategy, config.train.chunk_size),
                        strategy)
  images, labels = model_axis.put_shared((images, labels), strategy, plan.num_models)
  for s in range(steps):
    state, metrics = step(state, one_model.ModelInputs(knobs, put(keys['aug']), perms),
                          one_model.Batch(images, labels, jnp.int32(0), jnp.int32(s)))
  return state, metrics


def assert_same_models(a, b, rtol=1e-4, atol=1e-5):
  (sa, ma), (sb, mb) = a, b
  np.testing.assert_allclose(ma['loss'], mb['loss'], rtol=rtol)
  for x, y in zip(jax.tree.leaves(sa['params']), jax.tree.leaves(sb['params'])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope='module')
def unrolled():
  return tiny_steps('unroll')


@pytest.mark.parametrize('strategy', ['vmap', 'chunked', 'map', 'sequential', 'shard', 'shard:vmap'])
def test_strategy_matches_unroll(unrolled, strategy):
  """One device here, so 'shard' is a mesh of one: same numbers, same code path."""
  assert_same_models(unrolled, tiny_steps(strategy))


def test_sequential_compiles_one_model_and_calls_it_per_model():
  traces = []

  def fn(per_model, shared):
    traces.append(per_model['w'].shape)
    return {'y': per_model['w'] * shared, 'n': per_model['n'] + 1}

  lifted = model_axis.over_models(fn, 'sequential')
  per_model = {'w': jnp.arange(12.0).reshape(3, 4), 'n': jnp.arange(3)}
  for _ in range(2):
    out = lifted(per_model, jnp.float32(2.0))
    np.testing.assert_array_equal(out['y'], 2 * per_model['w'])
    np.testing.assert_array_equal(out['n'], [1, 2, 3])
  assert traces == [(4,)]  # one model's shapes, traced once for all models and calls
  assert model_axis.jit(lifted, 'sequential') is lifted  # not inlined into one program
  # Compiled ahead of time (as the benchmark and auto do), the calls use that program.
  compiled = lifted.compile(per_model, jnp.float32(2.0))
  assert lifted.compiled is compiled
  np.testing.assert_array_equal(lifted(per_model, jnp.float32(3.0))['y'], 3 * per_model['w'])
  # carry: the state (first input and output) is donated and updated in place per model.
  step = model_axis.over_models(lambda m, shared: ((m[0] + m[1] * shared), m[1].sum()),
                              'sequential', carry=True)
  state, x = jnp.zeros((3, 2)), jnp.arange(6.0).reshape(3, 2)
  new_state, sums = step((state, x), jnp.float32(2.0))
  assert state.is_deleted()
  np.testing.assert_array_equal(new_state, 2 * x)
  np.testing.assert_array_equal(sums, [1, 5, 9])


def test_sequential_needs_the_python_loop():
  config = tiny_config(**{'seeds': 2, 'train__strategy': 'sequential', 'train__loop': 'scan'})
  with pytest.raises(ConfigError, match='python'):
    tiny_plan(config, None)
  assert model_axis.resolve_loop('auto', 'gpu', 'sequential') == 'python'
  assert model_axis.resolve_loop('auto', 'gpu', 'vmap') == 'scan'


def test_materialized_operands_change_no_numbers(unrolled):
  assert_same_models(unrolled, tiny_steps('unroll', materialize=False))


SHARD_SCRIPT = textwrap.dedent('''
  import json, sys
  sys.path.insert(0, 'tests')
  import jax, numpy as np
  import test_model_axis as t
  ref, shard = t.tiny_steps('unroll'), t.tiny_steps('shard')
  t.assert_same_models(ref, shard)
  kernel = shard[0]['params']['Conv_0']['kernel']
  # The whole study, evaluation included, with the model axis over both devices.
  import tempfile
  from classbias_jax.train import trainer
  config = t.tiny_config(**{'train__strategy': 'shard', 'train__epochs': 1, 'seeds': 1})
  with tempfile.TemporaryDirectory() as workdir:
    accuracy = trainer.run(config, workdir)['mean_accuracy']
  print(json.dumps({'devices': jax.device_count(),
                    'shards': len(kernel.sharding.device_set),
                    'rows_per_device': [s.data.shape[0] for s in kernel.addressable_shards],
                    'study_models': accuracy.size}))
''')


def test_shard_over_two_host_devices():
  proc = subprocess.run([sys.executable, '-c', SHARD_SCRIPT], cwd=ROOT, env=host_devices_env(2),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out == {'devices': 2, 'shards': 2, 'rows_per_device': [2, 2], 'study_models': 2}


def test_the_rule_per_backend():
  """train.strategy 'rule': the same strategy on every machine of a backend."""
  assert model_axis.default_strategy('cpu', 8, 1) == 'sequential'
  assert model_axis.default_strategy('cpu', 1, 1) == 'unroll'
  assert model_axis.default_strategy('cpu', 8, 1, loop='scan') == 'unroll'
  assert model_axis.default_strategy('cpu', 8, 2) == 'shard'
  assert model_axis.default_strategy('gpu', 8, 1) == 'vmap'
  assert model_axis.default_strategy('tpu', 8, 4) == 'mesh'
  assert model_axis.resolve_strategy('rule', 4, backend='gpu') == 'vmap'
  assert model_axis.resolve_strategy('vmap', 4, backend='cpu') == 'vmap'


def test_model_mesh_uses_devices_that_divide_m():
  assert model_axis.model_mesh(4).size == 1  # one CPU device in this process
  assert [model_axis.mesh_size(m, 4) for m in (1, 2, 3, 4, 6, 8)] == [1, 2, 3, 4, 3, 4]
  assert tuning.candidates('cpu', 8, 2) == ['shard', 'shard:chunked', 'unroll', 'chunked',
                                              'vmap', 'sequential']
  assert tuning.candidates('cpu', 8, 1) == ['sequential', 'unroll', 'chunked', 'vmap']
  assert tuning.candidates('cpu', 8, 1, loop='scan') == ['unroll', 'chunked', 'vmap']
  assert tuning.candidates('gpu', 32, 1, loop='scan') == ['vmap', 'chunked']
  assert tuning.candidates('gpu', 32, 1) == ['vmap', 'chunked', 'sequential']
  assert tuning.candidates('cpu', 1, 1) == ['unroll', 'chunked', 'vmap']
  assert model_axis.split_strategy('sequential') == (False, 'sequential')
  assert model_axis.split_strategy('shard') == (True, 'unroll')
  assert model_axis.split_strategy('shard:vmap') == (True, 'vmap')
  assert model_axis.split_strategy('chunked') == (False, 'chunked')
  for bad in ('shardx', 'shard:shard', 'pmap', 'shard:sequential'):
    with pytest.raises(ConfigError):
      model_axis.split_strategy(bad)


# ------------------------------------------------------------------------------- auto
@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(tuning.ENV_CACHE_DIR, str(tmp_path))
  return tmp_path


def fake_measure(seconds, calls):
  def measure(strategy, give_up_s):
    calls.append((strategy, give_up_s))
    return seconds[strategy]
  return measure


def test_auto_measures_once_then_reads_the_cache(cache_dir):
  seconds = {'unroll': 2.0, 'chunked': 1.0, 'vmap': 9.0, 'sequential': 1.5}
  calls = []
  workload = {'model': 'tiny', 'batch': 16}
  pick = lambda: tuning.resolve_auto(4, workload, fake_measure(seconds, calls))
  assert pick() == 'chunked'
  # The rule's choice is measured first and sets the give-up bar of the others.
  assert calls == [('sequential', None), ('unroll', 4.5), ('chunked', 4.5), ('vmap', 3.0)]
  assert pick() == 'chunked' and len(calls) == 4  # cached: nothing measured again
  entry = json.load(open(cache_dir / 'strategies.json'))
  (key, value), = entry.items()
  assert json.loads(key)['models'] == 4 and json.loads(key)['backend'] == 'cpu'
  assert value['strategy'] == 'chunked' and value['step_s'] == seconds
  # Another workload is another entry.
  other = tuning.resolve_auto(8, workload, fake_measure(seconds, calls))
  assert other == 'chunked' and len(calls) == 8


def test_auto_keeps_sequential_unless_another_is_clearly_faster():
  margin = 1 + tuning.SEQUENTIAL_MARGIN
  assert tuning.pick({'unroll': 2.0, 'sequential': 2.0 * margin * 0.99}) == 'sequential'
  assert tuning.pick({'unroll': 2.0, 'sequential': 2.0 * margin * 1.01}) == 'unroll'
  assert tuning.pick({'unroll': 2.0, 'chunked': 1.0, 'sequential': 1.05}) == 'sequential'
  assert tuning.pick({'unroll': 2.0, 'chunked': 1.0, 'vmap': 3.0}) == 'chunked'


def test_the_rule_never_reads_the_cache(cache_dir, tmp_path):
  """A cached measurement changes nothing unless the config asks for 'auto'."""
  tuning.save_cache_entry('anything', {'strategy': 'vmap'})
  config = tiny_config(**{'seeds': 2, 'train__epochs': 1})
  assert tiny_plan(config, None).strategy == 'sequential'
  resolved = json.load(open(os.path.join(_run(config, tmp_path), 'config.json')))['resolved']
  assert resolved['strategy'] == 'sequential'


def _run(config, tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.run(config, workdir)
  return workdir


def test_choose_measures_real_steps(cache_dir):
  """The measurement compiles and times the real step; 'vmap' gives up early when slow."""
  config = tiny_config(**{'seeds': 2, 'train__batch_size': 16, 'sweep__values': (0.0,)})
  model = create_model('tiny', 10)
  chosen = tuning.choose(config, model, image_shape=(8, 8, 1), num_classes=10,
                         measure_steps=1)
  entry, = json.load(open(cache_dir / 'strategies.json')).values()
  assert chosen == entry['strategy'] == tuning.pick(entry['step_s'])
  assert set(entry['step_s']) == {'unroll', 'chunked', 'vmap', 'sequential'}
  assert all(s > 0 for s in entry['step_s'].values())


def test_auto_under_the_scan_loop_leaves_out_sequential(cache_dir):
  config = tiny_config(**{'seeds': 2, 'train__batch_size': 16, 'sweep__values': (0.0,),
                          'train__loop': 'scan'})
  chosen = tuning.choose(config, create_model('tiny', 10), image_shape=(8, 8, 1),
                         num_classes=10, measure_steps=1)
  entry, = json.load(open(cache_dir / 'strategies.json')).values()
  assert set(entry['step_s']) == {'unroll', 'chunked', 'vmap'} and chosen != 'sequential'


def test_short_runs_are_not_measured(cache_dir):
  config = tiny_config(**{'seeds': 2, 'train__batch_size': 16, 'sweep__values': (0.0,)})
  chosen = tuning.choose(config, create_model('tiny', 10), image_shape=(8, 8, 1),
                         num_classes=10, total_steps=tuning.MIN_STEPS_TO_MEASURE - 1)
  assert chosen == 'sequential' and not os.listdir(cache_dir)


# ----------------------------------------------------- loop, donation, mixed precision
def test_scan_loop_matches_python_loop_and_donates():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (48, 8, 8, 1), np.uint8)
  labels = rng.integers(0, 10, 48).astype(np.int32)
  dataset = type('Train', (), {'train_images': images, 'train_labels': labels})
  model = create_model('tiny', 10)
  out = {}
  for loop in ('python', 'scan'):
    config = tiny_config(**{'seeds': 1, 'train__batch_size': 16, 'train__loop': loop})
    plan = tiny_plan(config, 'unroll', num_train=48)
    epoch_fn = trainer.make_train_epoch(plan, model, trainer.ResidentInput(plan, dataset))
    state = init_states(plan, model)
    before = jax.tree.leaves(state)
    knobs = {k: jnp.asarray(v) for k, v in plan.knobs.items()}
    out[loop] = epoch_fn(state, knobs, plan.keys(), 0)
    assert all(x.is_deleted() for x in before), loop  # the state's buffers were donated
  assert_same_models(out['python'], out['scan'])


def test_bfloat16_compute_keeps_float32_weights_and_statistics():
  state, metrics = tiny_steps('unroll', dtype=jnp.bfloat16)
  ref_state, ref_metrics = tiny_steps('unroll')
  for tree in ('params', 'batch_stats', 'opt_state'):
    dtypes = {x.dtype for x in jax.tree.leaves(state[tree])}
    assert dtypes == {jnp.dtype(jnp.float32)}, (tree, dtypes)
  # The statistics were updated (not just initialised) and track the float32 run.
  stats = state['batch_stats']['BatchNorm_0']['mean']
  assert np.abs(np.asarray(stats)).max() > 0
  np.testing.assert_allclose(stats, ref_state['batch_stats']['BatchNorm_0']['mean'],
                             atol=0.05)
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=0.05)
  # The convolutions really run in bfloat16.
  model = create_model('tiny', 10, dtype=jnp.bfloat16)
  variables = jax.tree.map(lambda a: a[0], {'params': state['params'],
                                            'batch_stats': state['batch_stats']})
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, jnp.zeros((2, 8, 8, 1))).as_text()
  assert 'bf16' in hlo and 'convolution' in hlo
