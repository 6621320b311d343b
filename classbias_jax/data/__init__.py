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

`open_streamed(data_config)` is the streamed input mode's way in: folder and TFDS datasets
are opened without decoding their training split (stream.StreamedDataset); the other
sources are generated or read whole from a few files anyway, and come from `load`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from classbias_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A split dataset held in host memory.

  Images are uint8 [N, H, W, C] (C = 1 or 3); labels int32 [N] in 0..num_classes-1.
  """
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  val_images: np.ndarray | None = None
  val_labels: np.ndarray | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the training images in [0, 1]: float32 [C] each."""
    x = self.train_images.reshape(-1, self.train_images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-3).astype(np.float32)


def check(dataset: Dataset) -> Dataset:
  """Raises ConfigError on inconsistent arrays; returns the dataset unchanged."""
  for split in ('train', 'test', 'val'):
    images = getattr(dataset, f'{split}_images')
    labels = getattr(dataset, f'{split}_labels')
    if images is None:
      continue
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ConfigError(f'{dataset.name}: {split} images must be uint8 [N, H, W, 1|3], '
                        f'got {images.dtype} {images.shape}')
    if labels.shape != images.shape[:1]:
      raise ConfigError(f'{dataset.name}: {split} has {len(images)} images, {len(labels)} labels')
    if labels.size and (labels.min() < 0 or labels.max() >= dataset.num_classes):
      raise ConfigError(f'{dataset.name}: {split} labels outside 0..{dataset.num_classes - 1}')
  return check_test_classes(dataset)


def check_test_classes(dataset):
  """Raises ConfigError naming the classes without test images (no per-class accuracy
  could measure them); returns the dataset unchanged (resident or streamed)."""
  counts = np.bincount(dataset.test_labels, minlength=dataset.num_classes)
  if (counts == 0).any():
    missing = [dataset.class_names[c] for c in np.flatnonzero(counts == 0)]
    raise ConfigError(f'{dataset.name}: no test images of class {", ".join(map(str, missing))}')
  return dataset


def load(data_config) -> Dataset:
  """Loads the dataset named by `data_config.name` (see module docstring)."""
  data_config = _resolve(data_config)
  name = data_config.name
  if name == 'planted':
    from classbias_jax.data import planted
    ds = planted.load(data_config)
  elif name == 'digits':
    from classbias_jax.data import embedded
    ds = embedded.load_digits(data_config)
  elif name == 'fashion_mnist':
    from classbias_jax.data import idx
    ds = idx.load_fashion_mnist(data_config)
  elif name.startswith('idx:'):
    from classbias_jax.data import idx
    ds = idx.load_idx(data_config)
  elif name.startswith('folder:'):
    from classbias_jax.data import folder
    ds = folder.load(data_config)
  else:
    from classbias_jax.data import tfds_source
    ds = tfds_source.load(data_config)
  from classbias_jax.data import splits
  return check(splits.apply_splits(check(ds), data_config))


def _resolve(data_config):
  """'planted_folder' -> the config of the folder it writes ('folder:PATH'); else as is."""
  if data_config.name != 'planted_folder':
    return data_config
  from classbias_jax.data import planted
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
  from classbias_jax.data import stream
  return stream.open_dataset(data_config)
