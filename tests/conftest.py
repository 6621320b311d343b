"""Shared test setup: CPU only, a persistent compilation cache, tiny study configs."""
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CLASSBIAS_AUTO', 'rule')  # train.strategy 'auto' never measures in tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_compilation_cache_dir', os.path.join(ROOT, '.jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def tiny_config(**overrides):
  """A weight-decay study on digits small enough to train in seconds."""
  from classbias_jax import configs
  c = configs.base_config()
  c.data.name = 'digits'
  c.model.name = 'tiny'
  c.seeds = 2
  c.sweep.name = 'optim.weight_decay'
  c.sweep['values'] = (0.0, 0.05)
  c.train.epochs = 3
  c.train.batch_size = 64
  c.train.eval_every = 1
  c.optim.learning_rate = 0.1
  for dotted, value in overrides.items():
    node = c
    *path, last = dotted.split('__')
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.fixture
def tiny():
  return tiny_config


class Interrupted(Exception):
  """Stands for a run killed right after a checkpoint was written."""


def run_until_first_checkpoint(config, workdir: str, monkeypatch) -> None:
  """Runs train.run(config, workdir) and interrupts it just after its first checkpoint."""
  from classbias_jax import checkpoint, train
  real_save = checkpoint.save

  def save_then_crash(*args, **kwargs):
    real_save(*args, **kwargs)
    raise Interrupted

  monkeypatch.setattr(checkpoint, 'save', save_then_crash)
  with pytest.raises(Interrupted):
    train.run(config, workdir)
  monkeypatch.setattr(checkpoint, 'save', real_save)
