"""The streamed input mode reads folder and TFDS datasets lazily (data.open_streamed): the
same examples, labels and splits as the resident loader, no training image decoded up
front, and the same batches with grain worker processes."""
import multiprocessing

import numpy as np
import pytest
from conftest import run_until_first_checkpoint, tiny_config
from test_data_sources import build_tfds, image_keys, png_bytes, write_folder

from classbias_jax import data
from classbias_jax.train import trainer
from classbias_jax.data import modes
from classbias_jax.data import folder, splits, stream

tfds = pytest.importorskip('tensorflow_datasets')
tfds.disable_progress_bar()


def folder_config(root, **fields):
  """The tiny study on folder:root, streamed, batches of 4, split fields as given."""
  overrides = {'data__name': f'folder:{root}', 'data__input_mode': 'streamed',
               'train__batch_size': 4, 'seeds': 1, 'train__epochs': 1}
  return tiny_config(**dict(overrides, **{f'data__{k}': v for k, v in fields.items()}))


def tfds_config(tmp_path, **fields):
  """A prepared PNG TFDS dataset 'lazy_pngs' (40 train / 9 test, 8x8 RGB, 3 classes)."""
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(8, 8, 3)),
      'label': tfds.features.ClassLabel(names=['cat', 'dog', 'emu'])})
  build_tfds(tmp_path, 'lazy_pngs', {'train': (40, (8, 8, 3)), 'test': (9, (8, 8, 3))},
             features, png_bytes)
  config = folder_config(tmp_path, **fields)
  config.data.name, config.data.data_dir = 'lazy_pngs', str(tmp_path)
  return config


def streamed_epochs(config, dataset, epochs):
  """The training batches of `epochs` epochs of train_stream, as a list."""
  return list(modes.train_stream(config, dataset, epochs))


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.parametrize('kind', ['folder', 'tfds'])
def test_lazy_dataset_streams_what_the_resident_loader_reads(tmp_path, kind):
  if kind == 'folder':
    write_folder(tmp_path / 'flat', [14, 11, 9], size=(6, 5))
    config = folder_config(tmp_path / 'flat', val_fraction=0.2, train_subset=20)
  else:
    config = tfds_config(tmp_path, val_fraction=0.2, train_subset=20)
  resident = data.load(config.data)
  lazy, mode = modes.load_dataset(config.data, 'streamed')
  assert mode == 'streamed' and isinstance(lazy, stream.StreamedDataset)
  assert lazy.class_names == resident.class_names and lazy.num_train == resident.num_train == 20
  assert lazy.image_shape == resident.image_shape
  np.testing.assert_array_equal(lazy.train_labels, resident.train_labels)
  for split in ('test', 'val'):
    np.testing.assert_array_equal(getattr(lazy, f'{split}_images'),
                                  getattr(resident, f'{split}_images'))
    np.testing.assert_array_equal(getattr(lazy, f'{split}_labels'),
                                  getattr(resident, f'{split}_labels'))
  for got, want in zip(lazy.channel_stats(), resident.channel_stats()):
    np.testing.assert_allclose(got, want, rtol=1e-6)  # 20 < STATS_SAMPLE: every image
  assert lazy.resident_bytes() == modes.resident_bytes(resident)
  # 20 = 5 batches of 4: each epoch is the whole training split, reshuffled.
  batches = streamed_epochs(config, lazy, epochs=2)
  want = image_keys(resident.train_images, resident.train_labels)
  for epoch in (batches[:5], batches[5:]):
    assert image_keys(np.concatenate([b['image'] for b in epoch]),
                      np.concatenate([b['label'] for b in epoch])) == want
  # Item for item the resident arrays, so even the order matches the old streamed mode.
  assert_same_batches(batches, streamed_epochs(config, resident, epochs=2))


def test_lazy_folder_decodes_only_the_stats_sample_before_streaming(tmp_path, monkeypatch):
  write_folder(tmp_path / 'flat', [14, 11, 9], size=(6, 5))
  config = folder_config(tmp_path / 'flat', val_fraction=0.2, input_mode='auto')
  decoded = []
  real = folder.to_array
  monkeypatch.setattr(folder, 'to_array', lambda item, *a: decoded.append(item) or real(item, *a))
  monkeypatch.setattr(data, 'load', lambda cfg: pytest.fail('data.load decodes the train split'))
  monkeypatch.setattr(stream, 'STATS_SAMPLE', 6)
  monkeypatch.setattr(modes, 'RESIDENT_BYTES_CPU', 1000)  # 'auto' resolves to streamed
  lazy, mode = modes.load_dataset(config.data, config.data.input_mode)
  assert mode == 'streamed'
  assert (lazy.num_train, lazy.image_shape, lazy.num_classes) == (22, (5, 6, 3), 3)
  assert len(lazy.train_labels) == 22 and lazy.resident_bytes() == (22 + 5 + 7) * 90
  assert decoded == []  # listing, headers, labels and splits: no image decoded
  lazy.channel_stats()
  train_paths = {lazy.train_source.source.paths[i] for i in lazy.train_indices}
  assert len(decoded) == 6 and set(decoded) <= train_paths
  lazy.test_images, lazy.val_images  # noqa: B018 (decoded when first used)
  assert len(decoded) == 6 + 7 + 5 and not set(decoded[6:]) & train_paths
  del decoded[:]
  next(modes.train_stream(config, lazy, 1))
  assert 4 <= len(decoded) and set(decoded) <= train_paths  # streaming decodes as it reads


def test_lazy_tfds_decodes_only_the_stats_sample_before_streaming(tmp_path, monkeypatch):
  config = tfds_config(tmp_path, val_fraction=0.25)
  decodes = []
  real = tfds.features.Image.decode_example_np
  monkeypatch.setattr(tfds.features.Image, 'decode_example_np',
                      lambda self, example: decodes.append(1) or real(self, example))
  monkeypatch.setattr(stream, 'STATS_SAMPLE', 5)
  lazy = data.open_streamed(config.data)  # the split read all 40 labels
  assert (lazy.num_train, lazy.image_shape, lazy.resident_bytes()) == (30, (8, 8, 3), 49 * 192)
  np.testing.assert_array_equal(np.bincount(lazy.train_labels), [10, 10, 10])
  assert decodes == []
  lazy.channel_stats()
  assert len(decodes) == 5
  lazy.test_images, lazy.val_images  # noqa: B018
  assert len(decodes) == 5 + 9 + 10


def test_lazy_validation_split_is_stratified_disjoint_and_deterministic(tmp_path):
  counts = np.array([30, 17, 9, 4])
  write_folder(tmp_path / 'tt' / 'train', counts, size=(4, 4))
  write_folder(tmp_path / 'tt' / 'test', [2, 2, 2, 2], size=(4, 4), seed=9)
  config = folder_config(tmp_path / 'tt', val_fraction=0.25, train_subset=30, split_seed=5)
  lazy = data.open_streamed(config.data)
  train_idx, val_idx = lazy.train_indices, lazy.val_indices
  assert len(val_idx) == round(0.25 * counts.sum()) and len(train_idx) == 30
  assert not set(train_idx) & set(val_idx)
  all_labels = np.repeat(np.arange(4), counts)  # folder order: class by class
  np.testing.assert_array_equal(lazy.val_labels, all_labels[val_idx])
  assert np.all(np.abs(np.bincount(lazy.val_labels, minlength=4) - 0.25 * counts) <= 1)
  left = counts - np.bincount(lazy.val_labels, minlength=4)
  assert np.all(np.abs(np.bincount(lazy.train_labels, minlength=4) - 30 * left / left.sum()) <= 1)
  # The indices splits.split_indices gives the resident loader, so the same images.
  want_train, want_val = splits.split_indices(all_labels, config.data, 'x')
  np.testing.assert_array_equal(train_idx, want_train)
  np.testing.assert_array_equal(val_idx, want_val)
  again = data.open_streamed(config.data)
  np.testing.assert_array_equal(again.val_indices, val_idx)
  config.data.split_seed = 6
  assert set(data.open_streamed(config.data).val_indices) != set(val_idx)


@pytest.mark.parametrize('kind', ['folder', 'tfds'])
def test_worker_processes_give_the_same_batches_and_resume_mid_epoch(tmp_path, kind):
  if kind == 'folder':
    write_folder(tmp_path / 'flat', [10, 8, 6], size=(8, 8))
    config = folder_config(tmp_path / 'flat')  # 19 training images
  else:
    config = tfds_config(tmp_path, train_subset=19)
  lazy, _ = modes.load_dataset(config.data, 'streamed')
  want = streamed_epochs(config, lazy, epochs=2)
  assert len(want) == 8  # 4 batches of 4 an epoch
  config.data.workers = 2
  batches = modes.train_stream(config, lazy, 2)
  got = [next(batches) for _ in range(2)]  # stop mid-epoch
  assert len(multiprocessing.active_children()) >= 2  # grain's spawned worker processes
  state = batches.get_state()
  assert_same_batches(got + list(batches), want)
  resumed = modes.train_stream(config, lazy, 2)
  resumed.set_state(state)
  assert_same_batches(list(resumed), want[2:])


def test_streamed_run_with_workers_resumes_to_the_results_without(tmp_path, monkeypatch):
  write_folder(tmp_path / 'flat', [10, 8, 6], size=(8, 8))
  config = folder_config(tmp_path / 'flat', val_fraction=0.2)
  config.train.epochs, config.train.checkpoint_every = 2, 1
  monkeypatch.setattr(data, 'load', lambda cfg: pytest.fail('data.load decodes the train split'))
  whole = trainer.run(config, str(tmp_path / 'whole'))
  config.data.workers = 2
  workdir = str(tmp_path / 'resumed')
  run_until_first_checkpoint(config, workdir, monkeypatch)
  resumed = trainer.run(config, workdir)
  for key in ('test_predictions', 'val_predictions', 'train_loss', 'train_accuracy'):
    np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
