"""MNIST-format (IDX) datasets: `data.name = 'idx:PATH'` and `'fashion_mnist'`.

IDX files (gzip or raw) start with two zero bytes, a type code and the number of
dimensions, then each dimension as a big-endian int32, then the data in C order.

`idx:PATH` reads any folder holding train and test image/label files named like
MNIST's (`train-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte`, EMNIST's
`emnist-digits-test-images-idx3-ubyte`, ...); class names are '0'..'K-1'. (EMNIST
stores images transposed; they are read as stored.)

`fashion_mnist` reads the four standard files from `data.data_dir` when it is set
(or a TFDS copy prepared there); otherwise from the system copy that Debian's
`dataset-fashion-mnist` package installs, else from a TFDS copy in the default TFDS
data dir. A `data_dir` that holds no copy is an error rather than a silent fall back
to another copy.
"""
from __future__ import annotations

import gzip
import os
import re
import zlib

import numpy as np
from absl import logging

from classbias_jax.data import folder
from classbias_jax.data.dataset import Dataset
from classbias_jax.errors import ConfigError, DataUnavailable

SYSTEM_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
FASHION_MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                       't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

# IDX type code -> big-endian numpy dtype.
_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}
_NAME = re.compile(r'(train|t10k|test)[-_.](images|labels)')


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzip-compressed or raw, told apart by content) to a numpy array."""
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] == b'\x1f\x8b':
    try:
      data = gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
      raise DataUnavailable(f'{path}: truncated or corrupt gzip file ({e}); download it '
                            'again') from None
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] not in _DTYPES:
    raise DataUnavailable(f'{path}: not an IDX file (bad magic number {data[:4].hex()})')
  ndim = data[3]
  shape = tuple(np.frombuffer(data, '>i4', count=ndim, offset=4).astype(np.int64))
  dtype = np.dtype(_DTYPES[data[2]])
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
    raise DataUnavailable(f'{path}: IDX header says {shape} but the file holds '
                          f'{len(data) - offset} bytes of data (truncated?)')
  return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder('='))


def find_files(directory: str) -> dict[tuple[str, str], str]:
  """Maps ('train'|'test', 'images'|'labels') to the IDX files in `directory`.

  Missing keys are absent. Raw and gzip copies of one file: the raw one (faster).
  Two different candidates for one key is a ConfigError.
  """
  found = {}
  for name in sorted(os.listdir(directory)):
    match = _NAME.search(name.lower())
    if not match or not os.path.isfile(os.path.join(directory, name)):
      continue
    key = ('train' if match[1] == 'train' else 'test', match[2])
    found.setdefault(key, []).append(name)
  files = {}
  for key, names in found.items():
    stems = {n.removesuffix('.gz') for n in names}
    if len(stems) > 1:
      raise ConfigError(f'{directory}: several {key[0]} {key[1]} files {names}; '
                        'point idx: at a folder holding one set')
    files[key] = os.path.join(directory, min(names, key=len))
  return files


def _images(path: str) -> np.ndarray:
  images = read_idx(path)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise DataUnavailable(f'{path}: expected uint8 images [N, H, W], got {images.dtype} '
                          f'{images.shape}')
  return images[..., None] if images.ndim == 3 else images


def _labels(path: str, count: int) -> np.ndarray:
  labels = read_idx(path)
  if labels.ndim != 1 or labels.dtype.kind not in 'iu' or len(labels) != count:
    raise DataUnavailable(f'{path}: expected {count} integer labels, got {labels.dtype} '
                          f'{labels.shape}')
  return labels.astype(np.int32)


def load_dir(directory: str, name: str, class_names=None, image_size: int = 0) -> Dataset:
  """Reads train/test IDX files of `directory` to a Dataset (class names '0'..'K-1'
  unless given); image_size > 0 resizes to that square size."""
  files = find_files(directory)
  missing = [f'{s} {k}' for s in ('train', 'test') for k in ('images', 'labels')
             if (s, k) not in files]
  if missing:
    raise DataUnavailable(f'{name}: no IDX file for {", ".join(missing)} in {directory}')
  arrays = {}
  for split in ('train', 'test'):
    images = _images(files[split, 'images'])
    arrays[split] = folder.resize(images, image_size), _labels(files[split, 'labels'], len(images))
  if class_names is None:
    top = max(int(arrays[s][1].max(initial=0)) for s in arrays)
    class_names = tuple(str(c) for c in range(top + 1))
  logging.info('%s: read IDX files from %s', name, directory)
  return Dataset(name=name, train_images=arrays['train'][0], train_labels=arrays['train'][1],
                 test_images=arrays['test'][0], test_labels=arrays['test'][1],
                 class_names=tuple(class_names))


def _image_size(cfg) -> int:
  return int(getattr(cfg, 'image_size', 0) or 0)


def load_idx(cfg) -> Dataset:
  """`data.name = 'idx:PATH'` -> Dataset."""
  path = os.path.expanduser(cfg.name.split(':', 1)[1])
  if not os.path.isdir(path):
    raise DataUnavailable(f'{cfg.name}: no such directory')
  return load_dir(path, cfg.name, image_size=_image_size(cfg))


def _has_idx_set(directory: str) -> bool:
  if not os.path.isdir(directory):
    return False
  try:
    return len(find_files(directory)) == 4
  except ConfigError:
    return True  # Ambiguous files: let load_dir report them.


def load_fashion_mnist(cfg) -> Dataset:
  """`data.name = 'fashion_mnist'` -> Dataset: 60000 train / 10000 test, uint8 [28, 28, 1]."""
  from classbias_jax.data import tfds_source  # tensorflow_datasets: seconds to import
  data_dir = os.path.expanduser(getattr(cfg, 'data_dir', '') or '')
  size = _image_size(cfg)
  idx_dirs = [data_dir] if data_dir else [SYSTEM_FASHION_MNIST]
  for directory in idx_dirs:
    if _has_idx_set(directory):
      return load_dir(directory, 'fashion_mnist', FASHION_MNIST_CLASSES, size)
  tfds_dir = data_dir or tfds_source.default_data_dir()
  if tfds_source.is_prepared('fashion_mnist', tfds_dir):
    logging.info('fashion_mnist: reading the TFDS copy in %s', tfds_dir)
    return tfds_source.read('fashion_mnist', tfds_dir, size)
  searched = ', '.join(idx_dirs + ([] if tfds_dir in idx_dirs else [f'{tfds_dir} (TFDS)']))
  raise DataUnavailable(
      f'fashion_mnist: no copy found (searched {searched}); get it one of three ways: '
      f'`apt-get install dataset-fashion-mnist` (installs into {SYSTEM_FASHION_MNIST}), '
      f'or put the four IDX files ({", ".join(FASHION_MNIST_FILES)}, from '
      'github.com/zalandoresearch/fashion-mnist) in a folder and set data.data_dir to it, '
      'or prepare a TFDS copy with `pip install tensorflow && tfds build fashion_mnist '
      f'--file_format=array_record --data_dir={tfds_dir}`')
