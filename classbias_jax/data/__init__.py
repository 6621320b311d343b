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

from classbias_jax import configs
from classbias_jax.data import class_words, embedded, folder, idx, planted, splits, stream
from classbias_jax.data.dataset import Dataset, check, check_test_classes  # noqa: F401
from classbias_jax.errors import ConfigError

# The `data` fields only some sources read: field -> the sources that read it (kind()).
# Set away from its default for another source, a field is refused, so config.json never
# records as applied a field that was not.
READ_BY = {
    'image_size': ('planted', 'planted_folder', 'fashion_mnist', 'idx', 'folder', 'tfds'),
    'data_dir': ('planted_folder', 'fashion_mnist', 'tfds'),
    'planted_train_per_class': ('planted', 'planted_folder'),
    'planted_shortcut': ('planted',),
    'planted_rare': ('planted',),
    'planted_mixed': ('planted',),
    'planted_mixed_train': ('planted',),
}


def kind(name: str) -> str:
  """The source of dataset `name`: 'planted', 'planted_folder', 'digits',
  'fashion_mnist', 'idx', 'folder' or 'tfds'."""
  if name in ('planted', 'planted_folder', 'digits', 'fashion_mnist'):
    return name
  for prefix in ('idx', 'folder'):
    if name.startswith(prefix + ':'):
      return prefix
  return 'tfds'


def check_fields(data_config) -> None:
  """ConfigError naming a `data` field set for a source that ignores it (READ_BY)."""
  source, defaults = kind(data_config.name), configs.base_config().data
  for field, readers in READ_BY.items():
    value = data_config.get(field, defaults[field])
    if source not in readers and value != defaults[field]:
      raise ConfigError(f'data.{field} = {value!r} is ignored by {data_config.name} (read '
                        f'only by {", ".join(readers)}); leave it at {defaults[field]!r}')


def load(data_config) -> Dataset:
  """Loads the dataset named by `data_config.name` (see module docstring)."""
  check_fields(data_config)
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
  check_fields(data_config)
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
