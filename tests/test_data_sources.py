"""Dataset sources on data the tests build: TFDS (no TensorFlow), IDX, image folders,
splits and the streamed pipeline; plus the real Fashion-MNIST files when installed."""
import gzip
import io
import os
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from classbias_jax import data
from classbias_jax.data import folder, idx, item_sources, splits, stream
from classbias_jax.errors import ConfigError, DataUnavailable

tfds = pytest.importorskip('tensorflow_datasets')
tfds.disable_progress_bar()


def data_config(**fields):
  cfg = ml_collections.ConfigDict(dict(name='', data_dir='', val_fraction=0.0, train_subset=0,
                                       image_size=0, split_seed=0))
  cfg.update(fields)
  return cfg


def random_images(count, height, width, channels, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, height, width, channels), dtype=np.uint8)


def png_bytes(image):
  buffer = io.BytesIO()
  folder.open_image(image).save(buffer, format='PNG')
  return buffer.getvalue()


def image_keys(images, labels):
  """Multiset of (label, pixels) of a split: order-free comparison of two readers."""
  return sorted((int(label), image.tobytes()) for image, label in zip(images, labels))


# ---- TFDS ---------------------------------------------------------------------------

def build_tfds(data_dir, dataset_name, splits_, features, encode, version='1.0.0', classes=3):
  """Prepares a TFDS dataset `dataset_name` (array_record) without TensorFlow; returns the arrays.

  The builder stays unregistered, as when a prepared dataset's code is not importable.
  """
  arrays = {split: (random_images(n, *shape, seed=i), np.arange(n) % classes)
            for i, (split, (n, shape)) in enumerate(splits_.items())}

  with tfds.core.registered.skip_registration():
    class TestBuilder(tfds.core.GeneratorBasedBuilder):
      name = dataset_name
      VERSION = tfds.core.Version(version)

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=features,
                                     supervised_keys=('image', 'label'))

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in splits_}

      def _generate_examples(self, split):
        images, labels = arrays[split]
        for i, (image, label) in enumerate(zip(images, labels)):
          yield i, {'image': encode(image), 'label': int(label)}
  TestBuilder(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return arrays


def test_tfds_png_dataset_read_back_by_name_and_data_dir(tmp_path):
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(8, 8, 3)),
      'label': tfds.features.ClassLabel(names=['cat', 'dog', 'emu'])})
  arrays = build_tfds(tmp_path, 'tiny_pngs', {'train': (30, (8, 8, 3)), 'test': (9, (8, 8, 3))},
                      features, png_bytes)
  ds = data.load(data_config(name='tiny_pngs', data_dir=str(tmp_path)))
  assert ds.class_names == ('cat', 'dog', 'emu')
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.train_images.shape == (30, 8, 8, 3) and ds.test_images.shape == (9, 8, 8, 3)
  for split in ('train', 'test'):
    assert image_keys(getattr(ds, f'{split}_images'), getattr(ds, f'{split}_labels')) == \
        image_keys(*arrays[split])


def test_tfds_tensor_greyscale_with_validation_as_test_and_resize(tmp_path):
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Tensor(shape=(6, 6, 1), dtype=np.uint8),
      'label': tfds.features.ClassLabel(names=['a', 'b'])})
  arrays = build_tfds(tmp_path, 'tiny_tensors',
                      {'train': (10, (6, 6, 1)), 'validation': (4, (6, 6, 1))},
                      features, lambda image: image, classes=2)
  ds = data.load(data_config(name='tiny_tensors', data_dir=str(tmp_path)))
  assert image_keys(ds.test_images, ds.test_labels) == image_keys(*arrays['validation'])
  resized = data.load(data_config(name='tiny_tensors', data_dir=str(tmp_path), image_size=12))
  assert resized.train_images.shape == (10, 12, 12, 1)


def test_tfds_missing_dataset_is_one_fast_line_and_writes_nothing(tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError('tried to download')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_download)
  data_dir = tmp_path / 'nothing_here'
  start = time.perf_counter()
  with pytest.raises(DataUnavailable) as error:
    data.load(data_config(name='cifar100', data_dir=str(data_dir)))
  assert time.perf_counter() - start < 5
  message = str(error.value)
  assert '\n' not in message
  for part in ('cifar100', 'not prepared', str(data_dir), 'tfds build cifar100', 'array_record',
               'pip install tensorflow'):
    assert part in message
  assert not data_dir.exists()
  with pytest.raises(DataUnavailable, match='not a TFDS dataset name'):
    data.load(data_config(name='no_such_dataset_xyz', data_dir=str(data_dir)))


# ---- IDX and Fashion-MNIST -----------------------------------------------------------

def write_idx(path, array, compress):
  """Writes a uint8/int32 array as an IDX file (MNIST format), gzip when `compress`."""
  code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}[array.dtype]
  header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, '>i4').tobytes()
  payload = header + array.astype(array.dtype.newbyteorder('>')).tobytes()
  with open(path, 'wb') as f:
    f.write(gzip.compress(payload) if compress else payload)


def write_mnist_set(directory, train=(40, 5), test=(15, 5), compress=True):
  """Writes the four MNIST-named IDX files of random data; returns the arrays."""
  os.makedirs(directory, exist_ok=True)
  suffix = '.gz' if compress else ''
  arrays = {}
  for i, (split, prefix, (n, classes)) in enumerate((('train', 'train', train),
                                                     ('test', 't10k', test))):
    images = random_images(n, 7, 5, 1, seed=10 + i)[..., 0]
    labels = (np.arange(n) % classes).astype(np.uint8)
    write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte{suffix}'), images, compress)
    write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte{suffix}'), labels, compress)
    arrays[split] = images, labels
  return arrays


@pytest.mark.parametrize('compress', [True, False])
def test_idx_folder_reads_gzip_and_raw(tmp_path, compress):
  arrays = write_mnist_set(tmp_path, compress=compress)
  ds = data.load(data_config(name=f'idx:{tmp_path}'))
  assert ds.class_names == tuple('01234')
  np.testing.assert_array_equal(ds.train_images[..., 0], arrays['train'][0])
  np.testing.assert_array_equal(ds.test_labels, arrays['test'][1])
  assert ds.train_images.shape == (40, 7, 5, 1) and ds.train_labels.dtype == np.int32


def test_idx_rejects_bad_magic_and_truncated_files(tmp_path):
  path = tmp_path / 'x-idx3-ubyte'
  path.write_bytes(b'\x08\x03\0\0' + bytes(20))
  with pytest.raises(DataUnavailable, match='not an IDX file'):
    idx.read_idx(str(path))
  write_idx(str(path), np.zeros((4, 3, 3), np.uint8), compress=False)
  path.write_bytes(path.read_bytes()[:-5])
  with pytest.raises(DataUnavailable, match='truncated'):
    idx.read_idx(str(path))
  write_mnist_set(tmp_path / 'partial')
  os.remove(tmp_path / 'partial' / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(DataUnavailable, match='test labels'):
    data.load(data_config(name=f'idx:{tmp_path / "partial"}'))


def test_fashion_mnist_from_data_dir_has_its_class_names(tmp_path):
  arrays = write_mnist_set(tmp_path, train=(30, 10), test=(10, 10))
  ds = data.load(data_config(name='fashion_mnist', data_dir=str(tmp_path)))
  assert ds.class_names[0] == 'T-shirt/top' and ds.class_names[9] == 'Ankle boot'
  np.testing.assert_array_equal(ds.test_images[..., 0], arrays['test'][0])


def test_fashion_mnist_from_a_tfds_copy(tmp_path):
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(28, 28, 1)),
      'label': tfds.features.ClassLabel(names=list(idx.FASHION_MNIST_CLASSES))})
  # Same name and version as TFDS's own fashion_mnist, whose registered builder reads it.
  arrays = build_tfds(tmp_path, 'fashion_mnist', {'train': (20, (28, 28, 1)),
                                                  'test': (10, (28, 28, 1))},
                      features, png_bytes, version='3.0.1', classes=10)
  ds = data.load(data_config(name='fashion_mnist', data_dir=str(tmp_path)))
  assert ds.class_names == idx.FASHION_MNIST_CLASSES
  assert image_keys(ds.train_images, ds.train_labels) == image_keys(*arrays['train'])


def test_fashion_mnist_missing_names_three_ways(tmp_path, monkeypatch):
  monkeypatch.setattr(idx, 'SYSTEM_FASHION_MNIST', str(tmp_path / 'system'))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  with pytest.raises(DataUnavailable) as error:
    data.load(data_config(name='fashion_mnist'))
  message = str(error.value)
  assert '\n' not in message
  for part in ('apt-get install dataset-fashion-mnist', 'data.data_dir', 'tfds build fashion_mnist',
               str(tmp_path / 'system'), str(tmp_path / 'tfds')):
    assert part in message
  assert not os.listdir(tmp_path)


@pytest.mark.skipif(not os.path.isdir(idx.SYSTEM_FASHION_MNIST),
                    reason='Debian package dataset-fashion-mnist not installed')
def test_real_fashion_mnist_from_the_system_package():
  ds = data.load(data_config(name='fashion_mnist'))
  assert ds.train_images.shape == (60000, 28, 28, 1)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  # Known facts of the files: a misread header would shift every pixel and label.
  assert ds.train_labels[0] == 9 and ds.class_names[9] == 'Ankle boot'
  assert abs(ds.train_images.mean() / 255 - 0.2860) < 1e-3


# ---- image folders ---------------------------------------------------------------------

def write_folder(root, counts, size=(6, 5), grey=False, seed=0):
  """root/<class>/*.png of random images; returns {pixels bytes: class index}."""
  truth = {}
  for c, count in enumerate(counts):
    images = random_images(count, size[1], size[0], 1 if grey else 3, seed=seed + c)
    os.makedirs(os.path.join(root, f'class_{c}'), exist_ok=True)
    for i, image in enumerate(images):
      folder.open_image(image).save(os.path.join(root, f'class_{c}', f'img{i}.png'))
      truth[image.tobytes()] = c
  return truth


def test_flat_folder_gets_a_stratified_deterministic_test_split(tmp_path):
  truth = write_folder(tmp_path / 'flat', [10, 7, 5])
  ds = data.load(data_config(name=f'folder:{tmp_path / "flat"}'))
  assert ds.class_names == ('class_0', 'class_1', 'class_2')
  assert ds.train_images.shape[1:] == (5, 6, 3)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [2, 1, 1])  # 20% of 22
  decoded = {image.tobytes(): int(label) for image, label in
             zip(np.concatenate([ds.train_images, ds.test_images]),
                 np.concatenate([ds.train_labels, ds.test_labels]))}
  assert decoded == truth  # Every image once, lossless, in its class.
  again = data.load(data_config(name=f'folder:{tmp_path / "flat"}', split_seed=7))
  np.testing.assert_array_equal(again.test_images, ds.test_images)


def test_train_test_folder_greyscale_and_sizes(tmp_path):
  root = tmp_path / 'tt'
  write_folder(root / 'train', [4, 3], grey=True)
  write_folder(root / 'test', [2, 2], grey=True, seed=5)
  ds = data.load(data_config(name=f'folder:{root}'))
  assert ds.train_images.shape == (7, 5, 6, 1) and ds.test_images.shape == (4, 5, 6, 1)
  # One colour image makes the whole dataset RGB.
  Image.new('RGB', (6, 5), (200, 10, 10)).save(root / 'train' / 'class_0' / 'red.png')
  assert data.load(data_config(name=f'folder:{root}')).train_images.shape[-1] == 3
  Image.new('L', (9, 9)).save(root / 'train' / 'class_1' / 'big.png')
  with pytest.raises(ConfigError, match='image_size'):
    data.load(data_config(name=f'folder:{root}'))
  ds = data.load(data_config(name=f'folder:{root}', image_size=16))
  assert ds.train_images.shape == (9, 16, 16, 3)
  os.makedirs(root / 'test' / 'stranger')
  with pytest.raises(ConfigError, match='stranger'):
    data.load(data_config(name=f'folder:{root}'))


# ---- splits -------------------------------------------------------------------------------

def id_dataset(counts):
  """A Dataset whose image i holds the number i: splits can be checked for overlap."""
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  ids = np.arange(len(labels))
  images = np.zeros((len(labels), 2, 2, 1), np.uint8)
  images[:, 0, 0, 0], images[:, 0, 1, 0] = ids % 256, ids // 256
  names = tuple(str(c) for c in range(len(counts)))
  return data.Dataset('ids', images, labels, images[:3], labels[:3], names)


def ids_of(images):
  return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 1, 0].astype(int)


def test_validation_split_is_stratified_disjoint_and_deterministic():
  counts = np.array([300, 101, 57, 20, 9, 3])
  ds = id_dataset(counts)
  out = splits.apply_splits(ds, data_config(val_fraction=0.15, split_seed=1))
  train, val = ids_of(out.train_images), ids_of(out.val_images)
  assert not set(train) & set(val)
  assert sorted(np.concatenate([train, val])) == list(range(counts.sum()))
  assert len(val) == round(0.15 * counts.sum())
  assert np.all(np.abs(np.bincount(out.val_labels, minlength=6) - 0.15 * counts) <= 1)
  np.testing.assert_array_equal(ds.train_labels[val], out.val_labels)  # Labels follow images.
  same = splits.apply_splits(ds, data_config(val_fraction=0.15, split_seed=1))
  other = splits.apply_splits(ds, data_config(val_fraction=0.15, split_seed=2))
  np.testing.assert_array_equal(ids_of(same.val_images), val)
  assert set(ids_of(other.val_images)) != set(val)


def test_train_subset_is_stratified_and_leaves_validation_alone():
  counts = np.array([500, 250, 125, 60, 15])
  ds = id_dataset(counts)
  with_val = splits.apply_splits(ds, data_config(val_fraction=0.1, split_seed=3))
  out = splits.apply_splits(ds, data_config(val_fraction=0.1, train_subset=200, split_seed=3))
  np.testing.assert_array_equal(out.val_images, with_val.val_images)
  assert len(out.train_labels) == 200
  left = np.bincount(with_val.train_labels)
  assert np.all(np.abs(np.bincount(out.train_labels) - 200 * left / left.sum()) <= 1)
  assert set(ids_of(out.train_images)) <= set(ids_of(with_val.train_images))
  assert splits.apply_splits(ds, data_config()) is ds
  for bad in (dict(val_fraction=1.0), dict(train_subset=10_000), dict(train_subset=-1)):
    with pytest.raises(ConfigError):
      splits.apply_splits(ds, data_config(**bad))


def test_a_source_with_its_own_validation_split_keeps_it():
  """The planted data with a shortcut draws validation like test from val_fraction;
  the split then carves none from train, and train_subset still applies."""
  config = ml_collections.ConfigDict({'name': 'planted', 'planted_train_per_class': 20,
                                      'image_size': 8, 'planted_shortcut': 'frame',
                                      'val_fraction': 0.25, 'train_subset': 100,
                                      'split_seed': 0})
  ds = data.load(config)
  assert len(ds.val_labels) == 10 * 5 and np.bincount(ds.val_labels).tolist() == [5] * 10
  assert len(ds.train_labels) == 100 and np.bincount(ds.train_labels).tolist() == [10] * 10
  config.train_subset = 0
  assert len(data.load(config).train_labels) == 200  # none carved for validation


# ---- streamed pipeline -----------------------------------------------------------------------

def epoch_keys(batches):
  return sorted((int(label), image.tobytes()) for batch in batches
                for image, label in zip(batch['image'], batch['label']))


def test_streamed_folder_matches_resident_per_epoch_and_resumes(tmp_path):
  write_folder(tmp_path / 'flat', [12, 9, 6])
  resident = data.load(data_config(name=f'folder:{tmp_path / "flat"}'))
  train = item_sources.folder_sources(str(tmp_path / 'flat'))['train']
  steps = -(-len(train) // 5)  # the last, partial batch is kept
  it = iter(stream.pipeline(train, batch_size=5, seed=4, num_epochs=2, drop_remainder=False))
  batches = list(it)
  assert len(batches) == 2 * steps
  assert batches[0]['image'].dtype == np.uint8 and batches[0]['label'].dtype == np.int32
  expected = image_keys(resident.train_images, resident.train_labels)
  assert epoch_keys(batches[:steps]) == expected and epoch_keys(batches[steps:]) == expected
  first, second = (np.concatenate([b['label'] for b in part])
                   for part in (batches[:steps], batches[steps:]))
  assert not np.array_equal(first, second) or not np.array_equal(
      batches[0]['image'], batches[steps]['image'])  # Reshuffled each epoch.
  # Resume: a fresh iterator restored from the state after 3 batches continues identically.
  it = iter(stream.pipeline(train, batch_size=5, seed=4, num_epochs=2, drop_remainder=False))
  for _ in range(3):
    next(it)
  resumed = iter(stream.pipeline(train, batch_size=5, seed=4, num_epochs=2,
                                 drop_remainder=False))
  resumed.set_state(it.get_state())
  for want in batches[3:6]:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])


def test_streamed_arrays_resize_and_drop_remainder():
  images, labels = random_images(23, 8, 8, 3, seed=1), np.arange(23) % 4
  source = item_sources.ArraySource(images, labels)
  batches = list(stream.pipeline(source, batch_size=4, image_size=12, num_epochs=1))
  assert len(batches) == len(source) // 4 == 5
  assert batches[0]['image'].shape == (4, 12, 12, 3)


def test_input_throughput_measures_a_jpeg_folder(tmp_path):
  from classbias_jax.tuning import input_throughput
  input_throughput.write_jpeg_folder(str(tmp_path), 12, 16, 20, classes=3)
  train = item_sources.folder_sources(str(tmp_path))['train']
  assert len(train) + len(item_sources.folder_sources(str(tmp_path))['test']) == 12
  rate = input_throughput.measure(train, batch_size=2, image_size=8, seconds=0.05,
                                  num_threads=1, num_epochs=None)
  assert rate > 0


def test_a_class_without_test_images_is_named(tmp_path):
  """A folder class of one image gets no test image: an error naming it, at load time."""
  write_folder(tmp_path / 'flat', [10, 7, 1])
  with pytest.raises(ConfigError, match='no test images of class class_2'):
    data.load(data_config(name=f'folder:{tmp_path / "flat"}'))


def test_a_dataset_of_one_class_is_refused_in_both_input_modes(tmp_path):
  write_folder(tmp_path / 'one', [12])
  for load in (data.load, data.open_streamed):
    with pytest.raises(ConfigError, match='1 class .class_0.; a per-class audit needs at least two'):
      data.check_test_classes(load(data_config(name=f'folder:{tmp_path / "one"}')))


@pytest.mark.parametrize('name, field, value', [
    ('digits', 'image_size', 16), ('digits', 'data_dir', '/somewhere'),
    ('digits', 'planted_shortcut', 'frame'), ('planted', 'data_dir', '/somewhere'),
    ('planted_folder', 'planted_shortcut', 'zoom'), ('idx:/x', 'planted_train_per_class', 50)])
def test_a_field_the_dataset_ignores_is_refused(name, field, value):
  """Never recorded in config.json as applied when the source never read it."""
  for load in (data.load, data.open_streamed):
    with pytest.raises(ConfigError, match=f'data.{field} = .* is ignored by {name}'):
      load(data_config(name=name, **{field: value}))
  assert data.kind('cifar10') in data.READ_BY['image_size']  # TFDS resizes
