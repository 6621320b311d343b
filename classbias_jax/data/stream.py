"""Streamed input: a grain pipeline from a random-access source to uint8 host batches.

For datasets too large to hold on device (ImageNet): images are read, decoded and
resized to one fixed size on the host, shuffled and batched; every model of the sweep
trains on the same host batch and draws its own augmentation on device. So in this mode
the data order is set by the pipeline's `seed` alone and is shared by all models, while
in the device-resident mode each model can have its own order.

Each epoch is a fresh permutation of the whole split (seeded by `seed` and the epoch);
batches never straddle two epochs. The iterator's state (`it.get_state()`, a small
JSON-serialisable dict) restores the exact position with `it.set_state(state)`, so a
resumed run continues with the same batches.

Batches are {'image': uint8 [B, S, S, C], 'label': int32 [B]}.

The sources a pipeline reads are in item_sources.py.
`open_dataset(data_config)` opens a folder or TFDS dataset for this mode without decoding
its training split (see `StreamedDataset`): the pipeline then reads it item by item.
`python -m classbias_jax.tuning.input_throughput` measures the pipeline's images/s.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grain
import numpy as np

from classbias_jax.data import folder, splits
from classbias_jax.data.item_sources import (IndexedSource, folder_sources, source_labels,
                                            tfds_sources)
from classbias_jax.errors import ConfigError, DataUnavailable

# Training images the channel mean/std of a streamed dataset are estimated from.
STATS_SAMPLE = 2000
_STATS_SEED = 0  # a fixed sample: the statistics do not move with any config field
_READ_CHUNK = 256  # images decoded per batch of work when a split is read into memory


class Decode(grain.transforms.Map):
  """(path | bytes | array, label) -> (uint8 [S, S, C], label); see folder.to_array.

  shape: the (H, W, C) every image must have (when size is 0 and the dataset's images
  were not all seen up front); another size is a ConfigError naming data.image_size.
  """

  def __init__(self, mode: str, size: int, shape: Sequence[int] | None = None):
    self.mode, self.size = mode, size
    self.shape = None if shape is None else tuple(shape)

  def map(self, item):
    image, label = item
    channels = 1 if self.mode == 'L' else 3
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == channels
            and (not self.size or image.shape[:2] == (self.size, self.size))):
      try:
        image = folder.to_array(image, self.mode, self.size)
      except (OSError, ValueError) as e:
        what = image if isinstance(image, str) else 'an image'
        raise DataUnavailable(f'{what}: cannot decode image ({e})') from None
    if self.shape is not None and image.shape != self.shape:
      raise ConfigError(f'images have different sizes ({self.shape[1]}x{self.shape[0]} and '
                        f'{image.shape[1]}x{image.shape[0]}); set data.image_size to resize '
                        'them to one size')
    return image, label


def collate(items: Sequence[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
  """[(uint8 [S, S, C], label)] * B -> {'image': uint8 [B, S, S, C], 'label': int32 [B]}."""
  return {'image': np.stack([image for image, _ in items]),
          'label': np.asarray([label for _, label in items], np.int32)}


class ReadRows(grain.transforms.Map):
  """Item indices [B] -> their rows `rows` (start, stop; None = all) read, decoded and
  collated: a process of several reads only its share of each global batch."""

  def __init__(self, source, decode: Decode, rows: tuple[int, int] | None = None):
    self.source, self.decode, self.rows = source, decode, slice(*(rows or (None,)))

  def map(self, indices):
    return collate([self.decode.map(self.source[int(i)]) for i in indices[self.rows]])


# ---- datasets opened for streaming -------------------------------------------------------

def read_all(source, mode: str, size: int, shape: Sequence[int], what: str,
             ) -> tuple[np.ndarray, np.ndarray]:
  """Decodes a whole (small) source into memory as `pipeline` would: uint8 images
  [N, *shape] and int32 labels [N]; images of another shape are a ConfigError."""
  decode = Decode(mode, size).map
  images = np.empty((len(source),) + tuple(shape), np.uint8)
  labels = np.empty(len(source), np.int32)
  with futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for start in range(0, len(source), _READ_CHUNK):
      indices = range(start, min(len(source), start + _READ_CHUNK))
      for i, (image, label) in zip(indices, pool.map(lambda i: decode(source[i]), indices)):
        if image.shape != images.shape[1:]:
          raise ConfigError(f'{what}: images have different sizes ({shape[1]}x{shape[0]} and '
                            f'{image.shape[1]}x{image.shape[0]}); set data.image_size to '
                            'resize them to one size')
        images[i], labels[i] = image, label
  return images, labels


def sample_indices(n: int, k: int | None = None) -> np.ndarray:
  """Sorted indices of a fixed uniform sample of k (default STATS_SAMPLE) of 0..n-1, all
  of them when n <= k: the same on every run and machine."""
  k = STATS_SAMPLE if k is None else k
  if n <= k:
    return np.arange(n)
  return np.sort(np.random.default_rng(_STATS_SEED).choice(n, k, replace=False))


class StreamedDataset:
  """A dataset opened for the streamed input mode: its training split is not read into
  memory; `train_source` gives its items (image as stored, label) to `pipeline`, which
  decodes them (mode `mode`, resized to `image_size` when > 0) as it streams.

  It has what training reads of a `data.Dataset` (name, class_names, num_classes,
  num_train, image_shape, train_labels, test_/val_ images and labels, channel_stats())
  except train_images, and opening it decodes no image; each part is read when first asked:
    image_shape     (S, S, C) for data.image_size = S; else the native size from the
                    dataset's metadata or image headers. When neither fixes it (a TFDS
                    image feature of unknown size), from the stats sample, and `pipeline`
                    raises ConfigError on an image of another size.
    train_labels    a folder's from its class folders; a TFDS dataset's read from its
                    records with image decoding skipped. data.val_fraction and
                    data.train_subset need them, so they are read at opening then.
    test split      decoded into memory (evaluation needs arrays): it is small relative to
                    train for the datasets this mode is for (ImageNet: 50k validation
                    images against 1.28M training images).
    val split       data.val_fraction of train, stratified as in splits.apply_splits (the
                    same indices, so the same images as the resident mode); decoded into
                    memory, as it is evaluated like test.
    channel_stats() estimated from a fixed sample of STATS_SAMPLE training images
                    (sample_indices; all of them for a smaller split, giving the resident
                    mode's statistics up to float rounding).
  """

  def __init__(self, name: str, train, test, class_names: Sequence[str], mode: str,
               image_size: int, sizes: set, data_config):
    self.name, self.class_names, self.mode = name, tuple(class_names), mode
    self.image_size, self._test = image_size, test
    self._channels = 1 if mode == 'L' else 3
    self._native = None
    if not image_size:
      if len(sizes) > 1:
        (h1, w1), (h2, w2) = sorted(sizes)[:2]
        raise ConfigError(f'{name}: images have different sizes ({w1}x{h1} and {w2}x{h2}, '
                          '...); set data.image_size to resize them to one size')
      self._native = next(iter(sizes), None)
    split_needed = any(float(getattr(data_config, field, 0) or 0)
                       for field in ('val_fraction', 'train_subset'))
    self._val_source = None
    if split_needed:
      labels = source_labels(train)
      if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
        raise ConfigError(f'{name}: train labels outside 0..{len(self.class_names) - 1}')
      indices, val = splits.split_indices(labels, data_config, name)
      self.train_indices, self.val_indices = indices, val
      if val is not None:
        self._val_source = IndexedSource(train, val)
      self.train_source = IndexedSource(train, indices) if len(indices) < len(train) else train
    else:
      self.train_indices, self.val_indices, self.train_source = None, None, train

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_source)

  @functools.cached_property
  def train_labels(self) -> np.ndarray:
    return source_labels(self.train_source)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    if self.image_size:
      return (self.image_size, self.image_size, self._channels)
    if self._native is None:
      self._native = self._sample_stats[2]
    return tuple(self._native) + (self._channels,)

  def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in [0, 1] of the stats sample: float32 [C] each."""
    return self._sample_stats[:2]

  @functools.cached_property
  def _sample_stats(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    # Exact integer sums, one image at a time: a 224px sample never exists as floats.
    source = IndexedSource(self.train_source, sample_indices(self.num_train))
    decode = Decode(self.mode, self.image_size).map
    total, squares, count, sizes = 0, 0, 0, set()
    with futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for start in range(0, len(source), _READ_CHUNK):
        indices = range(start, min(len(source), start + _READ_CHUNK))
        for image, _ in pool.map(lambda i: decode(source[i]), indices):
          x = image.reshape(-1, image.shape[-1]).astype(np.int64)
          total, squares, count = total + x.sum(0), squares + (x * x).sum(0), count + len(x)
          sizes.add(image.shape[:2])
    if not count:
      raise DataUnavailable(f'{self.name}: no training images')
    if len(sizes) > 1 and not self.image_size:
      (h1, w1), (h2, w2) = sorted(sizes)[:2]
      raise ConfigError(f'{self.name}: images have different sizes ({w1}x{h1} and {w2}x{h2}, '
                        '...); set data.image_size to resize them to one size')
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0)) / 255.0
    return ((mean / 255.0).astype(np.float32), np.maximum(std, 1e-3).astype(np.float32),
            next(iter(sizes)))

  @functools.cached_property
  def _test_split(self) -> tuple[np.ndarray, np.ndarray]:
    return read_all(self._test, self.mode, self.image_size, self.image_shape, self.name)

  @property
  def test_images(self) -> np.ndarray:
    return self._test_split[0]

  def read_test(self, indices) -> tuple[list[np.ndarray], np.ndarray]:
    """Only the test items at `indices`, decoded: uint8 images [H, W, C] (as the split
    would hold them) and int32 labels [k]; nothing else is read."""
    decode = Decode(self.mode, self.image_size).map
    items = [decode(self._test[int(i)]) for i in indices]
    return [image for image, _ in items], np.array([label for _, label in items], np.int32)

  @property
  def test_labels(self) -> np.ndarray:
    return self._test_split[1]

  @functools.cached_property
  def _val_split(self) -> tuple[np.ndarray | None, np.ndarray | None]:
    if self._val_source is None:
      return None, None
    return read_all(self._val_source, self.mode, self.image_size, self.image_shape, self.name)

  @property
  def val_images(self) -> np.ndarray | None:
    return self._val_split[0]

  @property
  def val_labels(self) -> np.ndarray | None:
    return self._val_split[1]

  def resident_bytes(self) -> int:
    """Bytes of train, test and validation images as uint8 arrays: what the resident mode
    would hold, N x H x W x C, known without decoding an image (but see image_shape)."""
    count = self.num_train + len(self._test) + (
        0 if self._val_source is None else len(self._val_source))
    return count * int(np.prod(self.image_shape))

  def stream_options(self) -> dict[str, Any]:
    """The `pipeline` arguments that decode this dataset's items."""
    return {'mode': self.mode, 'image_size': self.image_size, 'image_shape': self.image_shape}


def open_dataset(data_config) -> StreamedDataset:
  """`data.name` = 'folder:PATH' or a TFDS name -> a StreamedDataset (data.data_dir,
  data.image_size, data.val_fraction, data.train_subset, data.split_seed): lists the files
  or opens the TFDS data source; decodes no image."""
  name = data_config.name
  if name.startswith('folder:'):
    opened = folder_sources(os.path.expanduser(name.split(':', 1)[1]))
  else:
    opened = tfds_sources(name, getattr(data_config, 'data_dir', '') or '')
  return StreamedDataset(name, opened['train'], opened['test'], opened['class_names'],
                         opened['mode'], int(getattr(data_config, 'image_size', 0) or 0),
                         opened['sizes'], data_config)


def pipeline(source, *, batch_size: int, image_size: int = 0, mode: str = 'RGB',
             seed: int = 0, num_epochs: int | None = None, shuffle: bool = True,
             drop_remainder: bool = True, num_threads: int = 0, num_workers: int = 0,
             image_shape: Sequence[int] | None = None,
             rows: tuple[int, int] | None = None) -> grain.IterDataset:
  """A grain dataset of batches {'image': uint8 [B, S, S, C], 'label': int32 [B]}.

  source: random-access, item = (path | encoded bytes | uint8 array, label).
  image_size: S (0 = native, which must be one size). num_epochs: None = forever.
  num_threads: reader threads per process, 0 = one per CPU (PIL decodes outside the GIL,
  so threads scale). num_workers > 0 also runs the pipeline in that many processes
  (spawned; the batches and their order are the same as with 0, and so is the iterator
  state); tuning/input_throughput.py measures both. image_shape: checked for every image
  (see Decode). rows: (start, stop), the rows of each batch read (a process's share of a
  global batch; the others are never read); None = all.
  """
  ds = grain.MapDataset.range(len(source))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  # Batch (of item indices, read by ReadRows) before repeat: batches stay within an epoch.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(ReadRows(source, Decode(mode, image_size, image_shape), rows))
  ds = ds.repeat(num_epochs)
  threads = num_threads or os.cpu_count() or 1
  # Elements here are whole batches: a few per thread keeps memory small (224px x 256 is
  # 38 MB a batch) while every thread has work.
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
  it_ds = ds.to_iter_dataset(read)
  if num_workers > 0:
    from absl import flags  # grain's workers read absl flags and die if they were never parsed
    if not flags.FLAGS.is_parsed():
      flags.FLAGS(sys.argv[:1])
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it_ds
