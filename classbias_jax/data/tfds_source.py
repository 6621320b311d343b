"""TFDS image-classification datasets read through `tfds.data_source` (no TensorFlow).

`data.name` is a TFDS name ('cifar100', 'imagenette/320px-v2', 'cifar10:3.0.2', ...) and
`data.data_dir` the TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets). The
dataset must have been prepared there in a random-access format (array_record); that
step needs TensorFlow for most datasets (TFDS encodes images with it), reading does not:

    pip install tensorflow && tfds build cifar100 --file_format=array_record --data_dir=DIR

Nothing here downloads or writes: a dataset that is not prepared is a one-line
DataUnavailable. The test split is 'test', or 'validation' when the dataset has no
'test' (ImageNet, Imagenette). With `data.image_size` = S > 0 images are resized to
S x S (see folder.py), which datasets of mixed image sizes need.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from classbias_jax.data import folder
from classbias_jax.data.dataset import Dataset
from classbias_jax.errors import ConfigError, DataUnavailable

_CHUNK = 1024  # Records per batched read: large enough to amortise, small in memory.
_RANDOM_ACCESS = ('array_record', 'parquet')


def default_data_dir() -> str:
  """TFDS's default data dir: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  return os.environ.get('TFDS_DATA_DIR', os.path.join(os.path.expanduser('~'),
                                                       'tensorflow_datasets'))


def _prepare_hint(name: str, data_dir: str, builder=None) -> str:
  manual = builder is not None and getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  return ('prepare it once (needs TensorFlow, only for this step): `pip install tensorflow '
          f'&& tfds build {name} --file_format=array_record --data_dir={data_dir}'
          + (' --manual_dir=DIR`, DIR holding the files the TFDS catalog page says to '
             'download by hand' if manual else '`'))


def _builder(name: str, data_dir: str):
  """The TFDS builder of `name` in `data_dir`, or None when TFDS knows no such dataset.

  Fast and side-effect free: reads at most the dataset's metadata files.
  """
  import tensorflow_datasets as tfds
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    return None


def is_prepared(name: str, data_dir: str) -> bool:
  """Whether `name` is prepared in `data_dir` (any file format)."""
  builder = _builder(name, data_dir)
  return builder is not None and builder.is_prepared()


def open_builder(name: str, data_dir: str = ''):
  """A prepared, random-access TFDS builder; DataUnavailable (one line) otherwise."""
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  builder = _builder(name, data_dir)
  if builder is None:
    raise DataUnavailable(f'{name}: not a TFDS dataset name and not prepared in {data_dir} '
                          '(data.data_dir); check the name in the TFDS catalog, or use '
                          'folder:PATH / idx:PATH for your own files')
  if not builder.is_prepared():
    raise DataUnavailable(f'{name}: TFDS dataset not prepared in {data_dir} (data.data_dir); '
                          + _prepare_hint(name, data_dir, builder))
  file_format = getattr(builder.info.file_format, 'value', builder.info.file_format)
  if file_format not in _RANDOM_ACCESS:
    raise DataUnavailable(f'{name}: prepared in {data_dir} as {file_format}, which cannot be '
                          'read without TensorFlow; re-' + _prepare_hint(name, data_dir, builder))
  return builder


def feature_keys(info) -> tuple[str, str]:
  """(image key, label key) of an image-classification dataset's features."""
  import tensorflow_datasets as tfds
  keys = info.supervised_keys
  if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys
  features = info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  if not images or not labels:
    raise ConfigError(f'{info.name}: not an image-classification dataset (features '
                      f'{list(features)})')
  return images[0], labels[0]


def test_split(info) -> str:
  """'test', or 'validation' for datasets without a test split."""
  for split in ('test', 'validation'):
    if split in info.splits:
      return split
  raise ConfigError(f'{info.name}: no test or validation split (splits {list(info.splits)})')


def open_sources(name: str, data_dir: str = '') -> dict:
  """Random-access sources of a prepared dataset, for reading or streaming.

  Returns {'train': source, 'test': source, 'image_key', 'label_key', 'class_names',
  'mode' ('L' or 'RGB')}; source[i] is a dict of decoded numpy features.
  """
  builder = open_builder(name, data_dir)
  info = builder.info
  image_key, label_key = feature_keys(info)
  split = test_split(info)
  if split != 'test':
    logging.info('%s: no test split, using %r as test', name, split)
  sources = builder.as_data_source(split=['train', split])
  shape = info.features[image_key].shape  # (H, W, C) or (H, W) for a Tensor feature.
  grey = len(shape) == 2 or shape[-1] == 1
  return {'train': sources[0], 'test': sources[1], 'image_key': image_key,
          'label_key': label_key, 'class_names': tuple(info.features[label_key].names),
          'mode': 'L' if grey else 'RGB', 'builder': builder,
          'native': tuple(shape[:2]) if None not in shape[:2] else None}


def label_source(builder, split: str, image_key: str):
  """A data source of `split` whose records hold the encoded image bytes, not the decoded
  image: reading labels through it skips the image decoding (the records are still read)."""
  import tensorflow_datasets as tfds
  if not isinstance(builder.info.features[image_key], tfds.features.Image):
    return builder.as_data_source(split=split)  # a Tensor feature: nothing to decode
  return builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})


def read_labels(source, label_key: str) -> np.ndarray:
  """int32 labels [N] of a data source, _CHUNK records per read (see `label_source`)."""
  n = len(source)
  labels = np.empty(n, np.int32)
  getitems = getattr(source, '__getitems__', None)
  for start in range(0, n, _CHUNK):
    indices = list(range(start, min(n, start + _CHUNK)))
    records = getitems(indices) if getitems else [source[i] for i in indices]
    labels[start:start + len(indices)] = [record[label_key] for record in records]
  return labels


def read_split(source, image_key: str, label_key: str, mode: str, size: int, what: str,
               ) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split: uint8 images [N, H, W, C] and int32 labels [N].

  Reads _CHUNK records per call (`__getitems__` when the source has it).
  """
  n = len(source)
  labels = np.empty(n, np.int32)
  images = None
  getitems = getattr(source, '__getitems__', None)
  for start in range(0, n, _CHUNK):
    indices = range(start, min(n, start + _CHUNK))
    records = getitems(list(indices)) if getitems else [source[i] for i in indices]
    for i, record in zip(indices, records):
      image = _as_image(record[image_key], mode, size)
      if images is None:
        # Allocated once from the first image: a second full-size copy would double memory.
        images = np.empty((n,) + image.shape, np.uint8)
      if image.shape != images.shape[1:]:
        raise ConfigError(f'{what}: images have different sizes ({images.shape[1:]} and '
                          f'{image.shape}); set data.image_size to resize them to one size')
      images[i] = image
      labels[i] = record[label_key]
  if images is None:
    images = np.zeros((0, size or 1, size or 1, 1 if mode == 'L' else 3), np.uint8)
  return images, labels


def _as_image(image: np.ndarray, mode: str, size: int) -> np.ndarray:
  channels = 1 if mode == 'L' else 3
  if image.ndim == 3 and image.shape[-1] == channels and (
      not size or image.shape[:2] == (size, size)):
    return image
  return folder.to_array(image, mode, size)


def read(name: str, data_dir: str = '', image_size: int = 0) -> Dataset:
  """Reads the train and test splits of a prepared TFDS dataset into memory."""
  opened = open_sources(name, data_dir)
  splits = {}
  for split in ('train', 'test'):
    splits[split] = read_split(opened[split], opened['image_key'], opened['label_key'],
                               opened['mode'], image_size, name)
  return Dataset(name=name, train_images=splits['train'][0], train_labels=splits['train'][1],
                 test_images=splits['test'][0], test_labels=splits['test'][1],
                 class_names=opened['class_names'])


def load(cfg) -> Dataset:
  """`data.name` = a TFDS name -> Dataset (uses data.data_dir, data.image_size)."""
  return read(cfg.name, getattr(cfg, 'data_dir', '') or '', int(getattr(cfg, 'image_size', 0) or 0))
