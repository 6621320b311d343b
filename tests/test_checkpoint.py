"""Checkpoints on disk: atomic saves, two kept, config checks, the input stream's position."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import Interrupted, tiny_config

from classbias_jax.train import checkpoint
from classbias_jax.train import trainer
from classbias_jax.data import item_sources, stream
from classbias_jax.errors import CheckpointError, ConfigError

# orbax writes a step into NAME + this suffix and renames it once complete.
TMP_SUFFIX = '.orbax-checkpoint-tmp'


def small_config(**overrides):
  fields = {'seeds': 1, 'train__epochs': 2, 'train__checkpoint_every': 1}
  return tiny_config(**dict(fields, **overrides))


def meta_of(config, **extra):
  return dict({'config': checkpoint.config_json(config)}, **extra)


def test_no_checkpoint_reads_as_none_and_writes_nothing(tmp_path):
  workdir = str(tmp_path / 'run')
  assert checkpoint.latest(workdir) is None
  assert checkpoint.read_meta(workdir, small_config()) is None
  assert not os.path.exists(workdir)


def test_save_keeps_the_two_newest_epochs_and_restores_the_newest(tmp_path):
  workdir = str(tmp_path)
  config = small_config()
  state = {'w': jnp.arange(3.0), 'step': jnp.zeros((), jnp.int32)}
  for epoch in (1, 2, 3):
    path = checkpoint.save(workdir, epoch, {'w': state['w'] + epoch, 'step': state['step']},
                           meta_of(config, curves=[0.1, float('nan')]))
    assert path == checkpoint.latest(workdir)
    assert sorted(os.listdir(checkpoint.directory(workdir))) == [
        f'step_{e:09d}' for e in range(max(1, epoch - 1), epoch + 1)]
  meta = checkpoint.read_meta(workdir, config)
  assert meta['epoch'] == 3 and meta['curves'][0] == 0.1 and np.isnan(meta['curves'][1])
  assert meta['saved_step'] == 3
  restored = checkpoint.restore_state(workdir, state)
  np.testing.assert_array_equal(restored['w'], [3.0, 4.0, 5.0])
  assert restored['step'].dtype == jnp.int32
  # An earlier epoch saved again (a run restarted before it) replaces the newer one.
  checkpoint.save(workdir, 1, state, meta_of(config))
  assert os.path.basename(checkpoint.latest(workdir)) == 'step_000000001'
  checkpoint.remove(workdir)
  assert checkpoint.latest(workdir) is None


def test_a_position_inside_an_epoch_is_numbered_by_steps_done(tmp_path):
  workdir, config = str(tmp_path), small_config()
  checkpoint.save(workdir, 2, {'w': jnp.zeros(2)}, meta_of(config), step=3, steps_per_epoch=10)
  assert os.path.basename(checkpoint.latest(workdir)) == 'step_000000023'
  meta = checkpoint.read_meta(workdir, config)
  assert (meta['epoch'], meta['step']) == (2, 3)
  with pytest.raises(ValueError, match='outside'):
    checkpoint.save(workdir, 2, {'w': jnp.zeros(2)}, meta_of(config), step=10,
                    steps_per_epoch=10)
  # The rules of when to save are not part of the run: other values resume it.
  other = small_config(**{'train__checkpoint_every': 0, 'train__checkpoint_minutes': 1.5,
                          'train__checkpoint_every_steps': 4})
  assert checkpoint.read_meta(workdir, other)['step'] == 3


def test_checkpoint_of_another_config_is_refused(tmp_path):
  workdir = str(tmp_path)
  saved = small_config()
  checkpoint.save(workdir, 1, {'w': jnp.zeros(2)}, meta_of(saved))
  assert checkpoint.read_meta(workdir, saved)['epoch'] == 1
  with pytest.raises(ConfigError, match='fresh workdir') as error:
    trainer.run(small_config(**{'optim__learning_rate': 0.05}), workdir)
  assert '\n' not in str(error.value) and 'optim.learning_rate' in str(error.value)
  assert os.listdir(workdir) == [checkpoint.CHECKPOINT_DIR]  # nothing written


def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  config = small_config()
  state = {'w': jnp.arange(3.0)}
  checkpoint.save(workdir, 1, state, meta_of(config))

  async def crash(*args, **kwargs):
    raise Interrupted

  # Fails while writing the meta item, after the state began: epoch 1 stays the latest.
  monkeypatch.setattr(ocp.JsonCheckpointHandler, 'async_save', crash)
  with pytest.raises(Interrupted):
    checkpoint.save(workdir, 2, {'w': state['w'] + 1}, meta_of(config))
  monkeypatch.undo()
  assert os.path.basename(checkpoint.latest(workdir)) == 'step_000000001'
  # Killed mid-save (no clean-up ran): orbax's temporary directory is not a checkpoint.
  root = checkpoint.directory(workdir)
  os.makedirs(os.path.join(root, 'step_000000003' + TMP_SUFFIX, 'state'))
  assert checkpoint.read_meta(workdir, config)['epoch'] == 1
  np.testing.assert_array_equal(checkpoint.restore_state(workdir, state)['w'], [0.0, 1.0, 2.0])
  checkpoint.save(workdir, 2, {'w': state['w'] + 1}, meta_of(config))
  assert sorted(os.listdir(root)) == ['step_000000001', 'step_000000002']  # temporaries gone
  np.testing.assert_array_equal(checkpoint.restore_state(workdir, state)['w'], [1.0, 2.0, 3.0])


def batch_stream(epochs=2):
  source = item_sources.ArraySource(np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1),
                              np.arange(10) % 3)
  return iter(stream.pipeline(source, batch_size=3, mode='L', seed=1, num_epochs=epochs,
                              num_threads=1))


@pytest.mark.parametrize('as_item', [True, False])
def test_the_stream_position_is_restored(tmp_path, as_item):
  workdir = str(tmp_path)
  batches = batch_stream()
  for _ in range(4):  # into the second epoch
    next(batches)
  meta = meta_of(small_config())
  if as_item:
    checkpoint.save(workdir, 1, {'w': jnp.zeros(1)}, meta, batches=batches)
  else:  # the position carried in the meta item
    checkpoint.save(workdir, 1, {'w': jnp.zeros(1)}, dict(meta, stream_state=batches.get_state()))
  assert os.path.isdir(os.path.join(checkpoint.latest(workdir), 'batches')) == as_item
  resumed = checkpoint.restore_batches(workdir, batch_stream())
  rest = list(batches)
  assert len(rest) == 2
  for want, got in zip(rest, resumed, strict=True):
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_a_checkpoint_without_the_stream_position_is_refused(tmp_path):
  workdir = str(tmp_path)
  checkpoint.save(workdir, 1, {'w': jnp.zeros(1)}, meta_of(small_config()))
  with pytest.raises(ValueError, match='position'):
    checkpoint.restore_batches(workdir, batch_stream())


# ----------------------------------------------------------------------------------------
# Damaged checkpoints: two saved once, copied and damaged in each way.
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def two_saved(tmp_path_factory):
  """A workdir with the checkpoints of epochs 1 and 2 of a small state (w = epoch * 1000
  + 0 .. 2999: arrays that do not compress away)."""
  workdir = str(tmp_path_factory.mktemp('saved'))
  for epoch in (1, 2):
    checkpoint.save(workdir, epoch, {'w': jnp.arange(3000.0) + 1000 * epoch},
                    meta_of(small_config()))
  return workdir


def biggest_array_file(step_dir: str) -> str:
  found = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, 'state'))
           for name in names if os.sep + 'd' + os.sep in os.path.join(root, name)]
  return max(found, key=os.path.getsize)


def truncate(path: str) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


DAMAGE = {  # kind -> (damage a step folder in place, what the warning names)
    'truncated array file': (lambda step: truncate(biggest_array_file(step)), 'bytes'),
    'missing orbax metadata': (lambda step: os.remove(os.path.join(step, '_CHECKPOINT_METADATA')),
                               '_CHECKPOINT_METADATA is missing'),
    'missing array metadata': (lambda step: os.remove(os.path.join(step, 'state', '_METADATA')),
                               '_METADATA is missing'),
    'missing manifest': (lambda step: os.remove(os.path.join(step, 'state', 'manifest.ocdbt')),
                         'manifest.ocdbt is missing'),
    'missing file list': (lambda step: os.remove(os.path.join(step, checkpoint.FILE_LIST)),
                          'files.json is missing'),
    'unreadable meta': (lambda step: open(os.path.join(step, 'meta', 'metadata'), 'w').write('{'),
                        'metadata has'),
}


@pytest.mark.parametrize('kind', DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, two_saved, kind,
                                                                   capsys):
  workdir = str(tmp_path / 'run')
  shutil.copytree(two_saved, workdir)
  damage, named = DAMAGE[kind]
  damage(checkpoint.step_path(workdir, 2))
  assert checkpoint.damage(workdir, 2) is not None and checkpoint.damage(workdir, 1) is None
  config = small_config()
  meta = checkpoint.read_meta(workdir, config)
  assert (meta['epoch'], meta['saved_step']) == (1, 1)
  warning = capsys.readouterr().err
  assert warning.count('\n') == 1 and named in warning
  assert 'step_000000002' in warning and 'resuming from step_000000001 instead' in warning
  restored = checkpoint.restore_state(workdir, {'w': jnp.zeros(3000)}, meta['saved_step'])
  np.testing.assert_array_equal(restored['w'], np.arange(3000.0) + 1000)
  assert checkpoint.latest(workdir) == checkpoint.step_path(workdir, 1)
  # Both damaged: the run starts afresh, and says so.
  damage(checkpoint.step_path(workdir, 1))
  assert checkpoint.read_meta(workdir, config) is None and checkpoint.latest(workdir) is None
  assert capsys.readouterr().err.strip().endswith('starting afresh')
  # The next save replaces the damaged ones at or after its step.
  checkpoint.save(workdir, 1, {'w': jnp.zeros(3000)}, meta_of(config))
  assert os.listdir(checkpoint.directory(workdir)) == ['step_000000001']
  assert checkpoint.read_meta(workdir, config)['saved_step'] == 1


def test_host_local_state_of_several_processes_saves_as_numpy(tmp_path, monkeypatch):
  # In a job of several processes, a state on this process's devices only (every
  # strategy but shard and mesh) is saved as numpy (written by process 0) and restored
  # where the fresh state lives: what orbax refuses to write as jax.Arrays.
  workdir, config = str(tmp_path), small_config()
  state = {'w': jnp.arange(6.0).reshape(2, 3), 'n': jnp.ones(2, jnp.int32)}
  monkeypatch.setattr(checkpoint, '_several_processes', lambda: True)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(checkpoint._savable(state)))
  checkpoint.save(workdir, 1, jax.tree.map(lambda x: x + 1, state), meta_of(config))
  restored = checkpoint.restore_state(workdir, state)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
  np.testing.assert_array_equal(restored['w'], np.arange(1.0, 7.0).reshape(2, 3))
  assert restored['n'].dtype == jnp.int32 and restored['w'].sharding == state['w'].sharding


def test_bytes_changed_in_place_are_one_line_saying_what_to_delete(tmp_path, two_saved):
  # The file check sees sizes only (neither it nor orbax keeps checksums): an array file
  # zeroed in place fails at restore, in one line. (Some bytes changed in a chunk's
  # middle can restore as wrong values instead: nothing here detects that.)
  workdir = str(tmp_path / 'run')
  shutil.copytree(two_saved, workdir)
  path = biggest_array_file(checkpoint.step_path(workdir, 2))
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.write(b'\0' * size)
  assert checkpoint.damage(workdir, 2) is None
  with pytest.raises(CheckpointError, match='step_000000002 cannot be restored') as error:
    checkpoint.restore_state(workdir, {'w': jnp.zeros(3000)})
  assert '\n' not in str(error.value) and 'delete that folder' in str(error.value)
