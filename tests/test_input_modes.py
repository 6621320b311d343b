"""Input modes (device-resident, streamed) and resumable runs, on digits with the tiny model."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Interrupted, run_until_first_checkpoint, tiny_config

from classbias_jax import checkpoint, configs, data, results, train
from classbias_jax import sweep as sweep_lib
from classbias_jax.errors import ConfigError


def small_config(**overrides):
  """M = 2 models, 2 epochs, a checkpoint after each epoch but the last."""
  fields = {'seeds': 1, 'train__epochs': 2, 'train__checkpoint_every': 1}
  return tiny_config(**dict(fields, **overrides))


def examples(images, labels):
  """The multiset of (label, image bytes) of a split, as a sorted list."""
  return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


def test_resident_and_streamed_see_the_same_examples_each_epoch():
  # 640 = 10 batches of 64: neither mode drops a remainder, so each sees the whole split.
  config = small_config(**{'data__train_subset': 640})
  dataset = data.load(config.data)
  n, steps = 640, 640 // config.train.batch_size
  want = examples(dataset.train_images, dataset.train_labels)
  keys = train.model_keys(sweep_lib.from_config(config))
  batches = train.train_stream(config, dataset, epochs=2)
  orders = []
  for epoch in range(2):
    perms = np.asarray(train.epoch_permutations(keys['data'], epoch, n))
    for perm in perms:  # each model's resident epoch
      used = perm[:steps * config.train.batch_size]
      assert examples(dataset.train_images[used], dataset.train_labels[used]) == want
    streamed = [next(batches) for _ in range(steps)]
    assert streamed[0]['image'].dtype == np.uint8
    assert streamed[0]['image'].shape == (64,) + dataset.image_shape
    images = np.concatenate([b['image'] for b in streamed])
    labels = np.concatenate([b['label'] for b in streamed])
    assert examples(images, labels) == want
    orders.append(labels)
  assert not np.array_equal(*orders)  # reshuffled each epoch
  with pytest.raises(StopIteration):
    next(batches)


def test_auto_input_mode_follows_the_memory_budget():
  assert train.resolve_input_mode('auto', 100 << 20) == 'resident'  # CPU: 2 GiB budget
  assert train.resolve_input_mode('auto', 3 << 30) == 'streamed'
  assert train.resolve_input_mode('streamed', 1) == 'streamed'

  class Device:
    def memory_stats(self):
      return {'bytes_limit': 16 << 30}

  assert train.resolve_input_mode('auto', 3 << 30, Device()) == 'resident'  # < 4 GiB
  assert train.resolve_input_mode('auto', 5 << 30, Device()) == 'streamed'
  with pytest.raises(ConfigError, match='input_mode'):
    configs.validate(small_config(**{'data__input_mode': 'disk'}))


@pytest.mark.parametrize('mode', ['resident', 'streamed'])
def test_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch, mode):
  config = small_config(**{'data__input_mode': mode, 'data__val_fraction': 0.2})
  whole = train.run(config, str(tmp_path / 'whole'))

  workdir = str(tmp_path / 'resumed')
  run_until_first_checkpoint(config, workdir, monkeypatch)
  monkeypatch.undo()
  assert os.path.basename(checkpoint.latest(workdir)) == 'epoch_000001'
  assert not os.path.exists(os.path.join(workdir, results.RESULTS_FILE))
  resumed = train.run(config, workdir)

  for key in ('test_predictions', 'val_predictions', 'train_loss', 'train_accuracy',
              'test_accuracy_at_eval', 'diverged', 'curve_epochs', 'eval_epochs'):
    np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
  loaded = results.load(workdir)
  np.testing.assert_array_equal(loaded['test_predictions'], whole['test_predictions'])
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  assert [json.loads(line)['epoch'] for line in lines] == [1, 2]
  assert not os.path.exists(checkpoint.directory(workdir))  # removed once results exist
  resolved = json.load(open(os.path.join(workdir, 'config.json')))['resolved']
  assert resolved['input_mode'] == mode
  check_validation_split(config, loaded)


def check_validation_split(config, saved):
  """val_labels / val_predictions saved; the split is stratified and carved from train."""
  dataset = data.load(config.data)
  full = data.load(tiny_config().data)  # the same data without a validation split
  np.testing.assert_array_equal(saved['val_labels'], dataset.val_labels)
  assert saved['val_predictions'].shape == (2, 1, len(dataset.val_labels))
  counts = np.bincount(full.train_labels, minlength=10)
  assert np.all(np.abs(np.bincount(dataset.val_labels, minlength=10) - 0.2 * counts) <= 1)
  # Train and validation partition the original training images (a multiset identity,
  # exact even if two images happen to be equal).
  assert sorted(examples(dataset.train_images, dataset.train_labels)
                + examples(dataset.val_images, dataset.val_labels)) == examples(
                    full.train_images, full.train_labels)


def test_checkpoint_of_another_config_is_refused(tmp_path):
  workdir = str(tmp_path)
  saved = small_config()
  checkpoint.save(workdir, 1, {'w': jnp.zeros(2)}, {'config': checkpoint.config_json(saved)})
  assert checkpoint.read_meta(workdir, saved)['epoch'] == 1
  with pytest.raises(ConfigError, match='fresh workdir') as error:
    train.run(small_config(**{'optim__learning_rate': 0.05}), workdir)
  assert '\n' not in str(error.value) and 'optim.learning_rate' in str(error.value)
  assert os.listdir(workdir) == [checkpoint.CHECKPOINT_DIR]  # nothing written


def test_a_crash_mid_save_leaves_no_loadable_checkpoint(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  config = small_config()
  meta = {'config': checkpoint.config_json(config)}
  state = {'w': jnp.arange(3.0)}
  checkpoint.save(workdir, 1, state, meta)

  def crash(*args, **kwargs):
    raise Interrupted

  # Fails after the state was written: the temporary is removed, epoch 1 stays the latest.
  monkeypatch.setattr(checkpoint, '_write_json', crash)
  with pytest.raises(Interrupted):
    checkpoint.save(workdir, 2, {'w': jnp.arange(3.0) + 1}, meta)
  monkeypatch.undo()
  # Killed mid-save (no clean-up ran): a temporary directory is not a checkpoint.
  os.makedirs(os.path.join(checkpoint.directory(workdir), '.tmp-killed', 'state'))
  assert checkpoint.read_meta(workdir, config)['epoch'] == 1
  np.testing.assert_array_equal(checkpoint.restore_state(workdir, state)['w'], [0.0, 1.0, 2.0])
  checkpoint.save(workdir, 2, {'w': jnp.arange(3.0) + 1}, meta)
  assert os.listdir(checkpoint.directory(workdir)) == ['epoch_000002']
