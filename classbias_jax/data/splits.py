"""Deterministic stratified splits: a validation split carved from train, a train subset.

Both keep every class's share of the images: a class with n_c of the N images gets
floor or ceil of `fraction * n_c` of the taken images (largest remainders first), so
each class is within one image of its exact share and the total is exact.

Config fields read from `data`: `val_fraction` (0 = no validation split), `train_subset`
(0 = all training images), `split_seed`. The validation split is carved first and does
not depend on `train_subset`, so runs on different subsets are validated on the same
images.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from classbias_jax.errors import ConfigError

# Separate random streams per purpose, so changing one split never moves the other.
_VAL_STREAM = 0
_SUBSET_STREAM = 1


def class_quotas(labels: np.ndarray, total: int) -> np.ndarray:
  """How many of each class to take so that `total` images keep the class shares.

  labels: int [N]; returns int64 [K] (K = max label + 1) summing to `total`, each entry
  floor or ceil of total * n_c / N (largest remainder method; ties go to the lower class).
  """
  counts = np.bincount(labels, minlength=int(labels.max(initial=-1)) + 1)
  if not 0 <= total <= counts.sum():
    raise ValueError(f'cannot take {total} of {counts.sum()} images')
  if counts.sum() == 0:
    return counts
  exact = counts * (total / counts.sum())
  quotas = np.floor(exact).astype(np.int64)
  short = total - quotas.sum()
  # Stable sort: equal remainders are broken by class index, never by chance.
  order = np.argsort(-(exact - quotas), kind='stable')
  quotas[order[:short]] += 1
  return quotas


def stratified_take(labels: np.ndarray, total: int, rng: np.random.Generator,
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices of `labels` into (taken, rest), taking `total` stratified by class.

  labels: int [N]. Within each class the taken images are a uniform random draw by `rng`.
  Returns two sorted int64 index arrays that partition 0..N-1.
  """
  return take_per_class(labels, class_quotas(labels, total), rng.permutation)


def take_per_class(labels: np.ndarray, quotas: Sequence[int],
                   order: Callable[[np.ndarray], Sequence[int]],
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices of `labels` into (taken, rest): of class c, the first quotas[c] of its
  indices as `order` arranges them (called once per class, in class order, with the
  ascending indices of that class). Returns two sorted int64 arrays partitioning 0..N-1.
  """
  taken = []
  for c, quota in enumerate(quotas):
    members = np.flatnonzero(labels == c)
    taken.append(np.asarray(order(members), np.int64)[:quota])
  taken = np.sort(np.concatenate(taken)) if taken else np.zeros(0, np.int64)
  rest = np.setdiff1d(np.arange(len(labels)), taken, assume_unique=True)
  return taken, rest


def _field(cfg, name: str, default):
  # Older configs may lack the split fields; absent means "no split".
  value = getattr(cfg, name, default)
  return default if value is None else value


def split_indices(labels: np.ndarray, cfg, name: str,
                  carve_val: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
  """Indices (train, val) into a training split with `labels`, per `val_fraction` and
  `train_subset` of `cfg` (the `data` config); val is None without a validation split
  (always when not `carve_val`: a source that drew its own has spent `val_fraction`).

  Only labels are needed, so a split that stays on disk (the streamed mode) is split
  without reading its images. train is in ascending order (a subset of it after the
  validation split), val too; they are disjoint. `name` names the dataset in errors.
  """
  val_fraction = float(_field(cfg, 'val_fraction', 0.0))
  train_subset = int(_field(cfg, 'train_subset', 0))
  seed = int(_field(cfg, 'split_seed', 0))
  if not 0.0 <= val_fraction < 1.0:
    raise ConfigError(f'data.val_fraction must be in [0, 1), got {val_fraction}')
  if train_subset < 0:
    raise ConfigError(f'data.train_subset must be >= 0 (0 = all), got {train_subset}')
  train, val = np.arange(len(labels)), None
  if val_fraction > 0 and carve_val:
    rng = np.random.default_rng([seed, _VAL_STREAM])
    val, train = stratified_take(labels, round(val_fraction * len(labels)), rng)
  if train_subset:
    if train_subset > len(train):
      raise ConfigError(f'data.train_subset={train_subset} exceeds the {len(train)} '
                        f'training images of {name} (after the validation split)')
    rng = np.random.default_rng([seed, _SUBSET_STREAM])
    keep, _ = stratified_take(labels[train], train_subset, rng)
    train = train[keep]
  return train, val


def apply_splits(dataset, cfg):
  """Carves `val_fraction` of train into a validation split, then keeps `train_subset`.

  dataset: a `Dataset`; one whose source drew a validation split of its own from
  `val_fraction` (the planted data with a shortcut) keeps it, and only `train_subset`
  applies. cfg: the `data` config. Returns a new `Dataset`; the same config gives the
  same images on every run and machine.
  """
  images, labels = dataset.train_images, dataset.train_labels
  train, val = split_indices(labels, cfg, dataset.name,
                             carve_val=dataset.val_images is None)
  if val is None and len(train) == len(labels):
    return dataset
  changes = {} if val is None else {'val_images': images[val], 'val_labels': labels[val]}
  return dataclasses.replace(dataset, train_images=images[train], train_labels=labels[train],
                             **changes)
