"""Shared test setup: CPU only, a persistent compilation cache, tiny study configs."""
import os
import signal
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Tests compile far more programs than they run steps: without LLVM's optimisations XLA
# compiles them about twice as fast on CPU, computing the same functions (a test here
# compares programs built alike, never against a timing). Commands the tests start
# inherit it; a study or benchmark run outside the tests never sees it (and JAX keys its
# compilation cache by these flags, so no test program reaches a study).
FAST_COMPILE = '--xla_backend_optimization_level=0'
if FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {FAST_COMPILE}'.strip()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import jax  # noqa: E402
import pytest  # noqa: E402

# A test run started in the background (`pytest &` in a script, nohup) ignores SIGINT, and
# so would every command the tests start: the signal tests need it as a terminal sends it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

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


def host_devices_env(devices: int) -> dict:
  """The environment of a subprocess whose CPU is split into `devices` XLA devices."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'{FAST_COMPILE} --xla_force_host_platform_device_count={devices}')


def tiny_plan(config, strategy='unroll', num_train=64, image_shape=(8, 8, 1), num_classes=10):
  """The plan of `config` on stand-in data of this shape (channel mean 0.5, std 0.25)."""
  import numpy as np
  from classbias_jax.train.plan import build_plan
  channels = image_shape[-1]
  return build_plan(config, num_train=num_train, num_classes=num_classes,
                    image_shape=image_shape, mean=np.full(channels, 0.5, np.float32),
                    std=np.full(channels, 0.25, np.float32), strategy=strategy)


def init_states(plan, model):
  """The freshly initialised state of the plan's M models, leaves [M, ...]."""
  from classbias_jax.train import one_model
  init = one_model.init_fn(plan, model)
  return jax.jit(jax.vmap(init))(plan.keys()['init'])


@pytest.fixture
def tiny():
  return tiny_config


class Interrupted(Exception):
  """Stands for a run killed right after a checkpoint was written."""


def run_until_first_checkpoint(config, workdir: str, monkeypatch) -> None:
  """Runs trainer.run(config, workdir) and interrupts it just after its first checkpoint."""
  from classbias_jax.train import checkpoint, trainer
  real_save = checkpoint.save

  def save_then_crash(*args, **kwargs):
    real_save(*args, **kwargs)
    raise Interrupted

  monkeypatch.setattr(checkpoint, 'save', save_then_crash)
  with pytest.raises(Interrupted):
    trainer.run(config, workdir)
  monkeypatch.setattr(checkpoint, 'save', real_save)
