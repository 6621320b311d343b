"""Input modes (device-resident, streamed) and resumable runs, on digits with the tiny model."""
import json
import os

import numpy as np
import pytest
from conftest import run_until_first_checkpoint, tiny_config

from classbias_jax import configs, data, results
from classbias_jax.train import checkpoint
from classbias_jax.train import design
from classbias_jax.train import trainer
from classbias_jax.train import one_model
from classbias_jax.data import modes
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
  keys = design.model_keys(design.sweep_from_config(config))
  batches = modes.train_stream(config, dataset, epochs=2)
  orders = []
  for epoch in range(2):
    perms = np.asarray(one_model.epoch_permutations(keys['data'], epoch, n))
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
  assert modes.resolve_input_mode('auto', 100 << 20) == 'resident'  # CPU: 2 GiB budget
  assert modes.resolve_input_mode('auto', 3 << 30) == 'streamed'
  assert modes.resolve_input_mode('streamed', 1) == 'streamed'

  class Device:
    def memory_stats(self):
      return {'bytes_limit': 16 << 30}

  assert modes.resolve_input_mode('auto', 3 << 30, Device()) == 'resident'  # < 4 GiB
  assert modes.resolve_input_mode('auto', 5 << 30, Device()) == 'streamed'
  with pytest.raises(ConfigError, match='input_mode'):
    configs.validate(small_config(**{'data__input_mode': 'disk'}))


@pytest.mark.parametrize('mode', ['resident', 'streamed'])
def test_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch, mode):
  config = small_config(**{'data__input_mode': mode, 'data__val_fraction': 0.2})
  whole = trainer.run(config, str(tmp_path / 'whole'))

  workdir = str(tmp_path / 'resumed')
  run_until_first_checkpoint(config, workdir, monkeypatch)
  monkeypatch.undo()
  meta = checkpoint.read_meta(workdir, config)
  assert (meta['epoch'], meta['step']) == (1, 0)
  assert not os.path.exists(os.path.join(workdir, results.RESULTS_FILE))
  resumed = trainer.run(config, workdir)

  for key in ('test_predictions', 'val_predictions', 'train_loss', 'train_accuracy',
              'test_accuracy_at_eval', 'diverged', 'curve_epochs', 'eval_epochs'):
    np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
  loaded = results.load_results(workdir)
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


