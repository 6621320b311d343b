"""The dataset every source returns: uint8 images and int32 labels held in host memory."""
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
  """Raises ConfigError for a dataset of fewer than two classes (nothing to compare a class
  with) or naming the classes without test images (no per-class accuracy could measure
  them); returns the dataset unchanged (resident or streamed)."""
  if dataset.num_classes < 2:
    raise ConfigError(f'{dataset.name}: {dataset.num_classes} class '
                      f'({", ".join(map(str, dataset.class_names)) or "none"}); a per-class '
                      'audit needs at least two classes')
  counts = np.bincount(dataset.test_labels, minlength=dataset.num_classes)
  if (counts == 0).any():
    missing = [dataset.class_names[c] for c in np.flatnonzero(counts == 0)]
    raise ConfigError(f'{dataset.name}: no test images of class {", ".join(map(str, missing))}')
  return dataset
