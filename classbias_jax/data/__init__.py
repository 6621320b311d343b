"""Dataset sources. Every source returns uint8 images and int32 labels, never floats.

`load(data_config)` dispatches on `data.name`:
  'planted'          generated RGB dataset with planted class effects (planted.py)
  'planted_folder'   the same images written once as an ImageNet-layout JPEG folder,
                     then read as 'folder:PATH' (planted.write_folder)
  'digits'           scikit-learn's handwritten digits (embedded.py)
  'fashion_mnist'    Fashion-MNIST IDX files: data_dir, system package or TFDS (idx.py)
  'idx:PATH'         any folder of MNIST-format IDX files (idx.py)
  'folder:PATH'      one subfolder per class of JPEG/PNG files (folder.py)
  other names        TFDS datasets read through `tfds.data_source` (tfds_source.py)

`data.class_words` (a words file, data/class_words.py) renames classes to readable words.
`open_streamed(data_config)` is the streamed input mode's way in: folder and TFDS datasets
are opened without decoding their training split (stream.StreamedDataset); the other
sources are generated or read whole from a few files anyway, and come from `load`.
"""
from __future__ import annotations

import numpy as np

from classbias_jax.data import class_words, embedded, folder, idx, planted, splits, stream
from classbias_jax.data.dataset import Dataset, check, check_test_classes  # noqa: F401


def load(data_config) -> Dataset:
  """Loads the dataset named by `data_config.name` (see module docstring)."""
  data_config = _resolve(data_config)
  name = data_config.name
  if name == 'planted':
    ds = planted.load(data_config)
  elif name == 'digits':
    ds = embedded.load_digits(data_config)
  elif name == 'fashion_mnist':
    ds = idx.load_fashion_mnist(data_config)
  elif name.startswith('idx:'):
    ds = idx.load_idx(data_config)
  elif name.startswith('folder:'):
    ds = folder.load(data_config)
  else:
    from classbias_jax.data import tfds_source  # tensorflow_datasets: seconds to import
    ds = tfds_source.load(data_config)
  return class_words.apply(check(splits.apply_splits(check(ds), data_config)), data_config)


def _resolve(data_config):
  """'planted_folder' -> the config of the folder it writes ('folder:PATH'); else as is."""
  if data_config.name != 'planted_folder':
    return data_config
  return planted.as_folder_config(data_config)


def streams_lazily(name: str) -> bool:
  """Whether `open_streamed` leaves the training split of dataset `name` on disk."""
  generated_or_small = ('planted', 'digits', 'fashion_mnist')
  return name not in generated_or_small and not name.startswith('idx:')


def open_streamed(data_config):
  """The dataset named by `data_config.name`, for the streamed input mode.

  folder:PATH and TFDS names: a stream.StreamedDataset, which decodes no training image
  until the pipeline reads it (the test and validation splits, and a sample for the
  channel statistics, are decoded when first used). Other sources: `load(data_config)`.
  """
  data_config = _resolve(data_config)
  if not streams_lazily(data_config.name):
    return load(data_config)
  return class_words.apply(stream.open_dataset(data_config), data_config)


def read_test_images(data_config, indices) -> tuple[list[np.ndarray], np.ndarray]:
  """The test images at `indices` of the dataset `data_config` names, in the split order
  a run evaluates: uint8 [H, W, C] each, and their int32 labels [k]. Folder and TFDS
  datasets decode only those images; the other sources are generated or read whole."""
  data_config = _resolve(data_config)
  if streams_lazily(data_config.name):
    return stream.open_dataset(data_config).read_test(indices)
  dataset = load(data_config)
  indices = np.asarray(indices, np.int64)
  return list(dataset.test_images[indices]), dataset.test_labels[indices].astype(np.int32)
