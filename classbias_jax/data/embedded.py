"""Small real datasets shipped inside installed packages (no network)."""
from __future__ import annotations

import numpy as np

from classbias_jax.data import Dataset

TEST_FRACTION = 0.25


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
  """Deterministic stratified split: returns (train_idx, test_idx), each sorted."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    k = int(round(test_fraction * len(idx)))
    test.append(idx[:k])
    train.append(idx[k:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(data_config) -> Dataset:
  """scikit-learn's 1797 handwritten digits, 8x8 greyscale (0..16 scaled to 0..255).

  A stratified 75/25 train/test split, fixed by `data.split_seed`.
  """
  from sklearn.datasets import load_digits as sk_load_digits
  digits = sk_load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  train, test = stratified_split(labels, TEST_FRACTION, int(data_config.get('split_seed', 0)))
  names = tuple(str(i) for i in range(10))
  return Dataset('digits', images[train], labels[train], images[test], labels[test], names)
