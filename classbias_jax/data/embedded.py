"""Small real datasets shipped inside installed packages (no network)."""
from __future__ import annotations

import numpy as np

from classbias_jax.data import splits
from classbias_jax.data.dataset import Dataset

TEST_FRACTION = 0.25


def train_test_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) indices: TEST_FRACTION of each class, rounded per class, as a
  random draw seeded by `seed`."""
  quotas = [int(round(TEST_FRACTION * n)) for n in np.bincount(labels)]
  test, train = splits.take_per_class(labels, quotas, np.random.default_rng(seed).permutation)
  return train, test


def load_digits(data_config) -> Dataset:
  """scikit-learn's 1797 handwritten digits, 8x8 greyscale (0..16 scaled to 0..255).

  A stratified 75/25 train/test split, fixed by `data.split_seed`.
  """
  from sklearn.datasets import load_digits as sk_load_digits
  digits = sk_load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  train, test = train_test_indices(labels, int(data_config.get('split_seed', 0)))
  names = tuple(str(i) for i in range(10))
  return Dataset('digits', images[train], labels[train], images[test], labels[test], names)
