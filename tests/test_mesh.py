"""The 2-D mesh (models x data): axis sizes, one-line errors, and, over 8 host devices, the
same per-class results on every mesh shape as on one device."""
import json
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, host_devices_env, tiny_config

from classbias_jax import configs
from classbias_jax.train import model_axis
from classbias_jax.errors import ConfigError


def test_mesh_shape_choice_and_errors():
  # Models first (they need no communication), then the devices the batch divides.
  assert model_axis.mesh_shape(8, 64, 8) == (8, 1)
  assert model_axis.mesh_shape(4, 64, 8) == (4, 2)
  assert model_axis.mesh_shape(6, 64, 8) == (2, 4)
  assert model_axis.mesh_shape(3, 100, 8) == (3, 2)  # 2 of the 8 devices idle
  assert model_axis.mesh_shape(8, 64, 8, models=2) == (2, 4)
  assert model_axis.mesh_shape(8, 64, 8, data=8) == (1, 8)
  for kwargs, message in (({'models': 3}, 'does not divide the 8 models'),
                          ({'data': 3}, 'does not divide train.batch_size'),
                          ({'models': 4, 'data': 4}, 'needs 16 devices')):
    with pytest.raises(ConfigError, match=message):
      model_axis.mesh_shape(8, 64, 8, **kwargs)
  assert model_axis.parse_mesh('mesh:2x4') == (2, 4)
  for bad in ('mesh:2', 'mesh:0x4', 'mesh:ax2'):
    with pytest.raises(ConfigError, match='mesh'):
      model_axis.parse_mesh(bad)


def test_mesh_is_a_config_choice():
  config = tiny_config(**{'train__strategy': 'mesh:1x1'})
  configs.validate(config)
  # One device here: 'mesh' resolves to the 1x1 mesh; the rule on GPU/TPU picks a mesh.
  assert model_axis.resolve_strategy('mesh', 4, batch_size=64) == 'mesh:1x1'
  assert model_axis.default_strategy('gpu', 16, 8) == 'mesh'
  with pytest.raises(ConfigError, match='needs 2 devices'):
    model_axis.resolve_strategy('mesh:1x2', 4, batch_size=64)


MESH_SCRIPT = textwrap.dedent('''
  import json, sys, tempfile
  sys.path.insert(0, 'tests')
  import jax, numpy as np
  from conftest import tiny_config
  from classbias_jax.train import trainer
  out = {}
  for strategy in sys.argv[1:]:
    config = tiny_config(**{'train__strategy': strategy, 'train__epochs': 2, 'seeds': 4,
                            'data__train_subset': 384,
                            'train__eval_every': 0, 'sweep__values': (0.0, 1e-3)})
    with tempfile.TemporaryDirectory() as workdir:
      r = trainer.run(config, workdir)
    out[strategy] = {k: np.asarray(r[k]).tolist() for k in
                     ('test_predictions', 'per_class_accuracy', 'train_loss')}
  print(json.dumps({'devices': jax.device_count(), 'runs': out}))
''')


def test_meshes_over_eight_devices_match_one_device():
  """M = 8 models (2 values x 4 seeds), batch 64: every mesh shape (all data, both axes,
  all models) trains the models one device trains, up to the order of floating-point sums
  (BatchNorm statistics, the loss and the gradients are summed across the data axis in
  another order). Two epochs of
  training amplify those last-bit differences into a few test images classified
  otherwise: at most 10% of a class's ~45 test images, 3% of all."""
  # Two processes, each a share of the shapes, so their compilations overlap.
  procs = [subprocess.Popen([sys.executable, '-c', MESH_SCRIPT, *strategies], cwd=ROOT,
                            env=host_devices_env(8), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for strategies in (('vmap', 'mesh:1x8'), ('mesh:2x4', 'mesh:8x1'))]
  runs = {}
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out['devices'] == 8
    runs.update(out['runs'])
  out = {'runs': runs}
  import numpy as np
  ref = {k: np.asarray(v) for k, v in out['runs'].pop('vmap').items()}
  for strategy, run in out['runs'].items():
    run = {k: np.asarray(v) for k, v in run.items()}
    agree = (run['test_predictions'] == ref['test_predictions']).mean()
    assert agree > 0.97, (strategy, agree)
    assert np.abs(run['per_class_accuracy'] - ref['per_class_accuracy']).max() <= 0.1, strategy
    np.testing.assert_allclose(run['train_loss'], ref['train_loss'], rtol=2e-3, err_msg=strategy)
