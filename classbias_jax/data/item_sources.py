"""Random-access sources of (image as stored, label) items, the input of the streamed
pipeline (stream.py): resident arrays, image files, TFDS records, a subset of another
source; the labels of a source without decoding its images; the sources of a folder or
TFDS dataset's train and test splits."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from classbias_jax.data import folder

class ArraySource:
  """Resident arrays as a grain source: item i = (uint8 [H, W, C], label)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i) -> tuple[np.ndarray, int]:
    return self.images[i], int(self.labels[i])


class FileSource:
  """Image files as a grain source: item i = (path, label); decoding happens in `Decode`."""

  def __init__(self, paths: Sequence[str], labels: np.ndarray):
    self.paths, self.labels = list(paths), labels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i) -> tuple[str, int]:
    return self.paths[i], int(self.labels[i])


class TfdsSource:
  """A TFDS data source as a grain source: item i = (decoded image, label).

  labels_from: a source of the same records whose image is left encoded (see
  tfds_source.label_source), so that `read_labels` decodes no image.
  """

  def __init__(self, source, image_key: str, label_key: str, labels_from=None):
    self.source, self.image_key, self.label_key = source, image_key, label_key
    self.labels_from = labels_from

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i) -> tuple[np.ndarray, int]:
    record = self.source[i]
    return record[self.image_key], int(record[self.label_key])

  def read_labels(self) -> np.ndarray:
    """int32 [N]: every record is read, no image decoded (when `labels_from` is set)."""
    from classbias_jax.data import tfds_source  # tensorflow_datasets: seconds to import
    source = self.source if self.labels_from is None else self.labels_from
    return tfds_source.read_labels(source, self.label_key)


class IndexedSource:
  """Items `indices` of another source, in that order: a split of a source, not a copy."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def source_labels(source) -> np.ndarray:
  """int32 labels [N] of a source without decoding its images: a folder's come from its
  class folder names; a TFDS source's are read from its records."""
  if isinstance(source, IndexedSource):
    return source_labels(source.source)[source.indices]
  if hasattr(source, 'read_labels'):
    return source.read_labels()
  return np.asarray(source.labels, np.int32)


def folder_sources(path: str) -> dict:
  """{'train': FileSource, 'test': FileSource, 'class_names', 'mode', 'sizes'} of
  folder:PATH; sizes: the set of (height, width) of all its images (headers only)."""
  listing = folder.find(path)
  paths = listing['train'][0] + listing['test'][0]
  mode, sizes = folder.image_mode_and_sizes(paths)
  return {'train': FileSource(*listing['train']), 'test': FileSource(*listing['test']),
          'class_names': tuple(listing['class_names']), 'mode': mode, 'sizes': sizes}


def tfds_sources(name: str, data_dir: str = '') -> dict:
  """{'train': TfdsSource, 'test': TfdsSource, 'class_names', 'mode', 'sizes'} of a TFDS
  dataset; sizes: {(height, width)} from its metadata, empty when they do not fix one."""
  from classbias_jax.data import tfds_source  # tensorflow_datasets: seconds to import
  opened = tfds_source.open_sources(name, data_dir)
  keys = opened['image_key'], opened['label_key']
  labels_from = tfds_source.label_source(opened['builder'], 'train', opened['image_key'])
  return {'train': TfdsSource(opened['train'], *keys, labels_from=labels_from),
          'test': TfdsSource(opened['test'], *keys), 'class_names': opened['class_names'],
          'mode': opened['mode'], 'sizes': {opened['native']} if opened['native'] else set()}
