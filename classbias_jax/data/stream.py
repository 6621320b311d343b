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

    python -m classbias_jax.data.stream    # images/s for 32x32 and 224x224 JPEG inputs
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import grain
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
  """A TFDS data source as a grain source: item i = (decoded image, label)."""

  def __init__(self, source, image_key: str, label_key: str):
    self.source, self.image_key, self.label_key = source, image_key, label_key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i) -> tuple[np.ndarray, int]:
    record = self.source[i]
    return record[self.image_key], int(record[self.label_key])


class Decode(grain.transforms.Map):
  """(path | bytes | array, label) -> (uint8 [S, S, C], label); see folder.to_array."""

  def __init__(self, mode: str, size: int):
    self.mode, self.size = mode, size

  def map(self, item):
    image, label = item
    channels = 1 if self.mode == 'L' else 3
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == channels
            and (not self.size or image.shape[:2] == (self.size, self.size))):
      image = folder.to_array(image, self.mode, self.size)
    return image, label


def collate(items: Sequence[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
  """[(uint8 [S, S, C], label)] * B -> {'image': uint8 [B, S, S, C], 'label': int32 [B]}."""
  return {'image': np.stack([image for image, _ in items]),
          'label': np.asarray([label for _, label in items], np.int32)}


def folder_sources(path: str) -> dict:
  """{'train': FileSource, 'test': FileSource, 'class_names', 'mode'} of folder:PATH."""
  listing = folder.find(path)
  paths = listing['train'][0] + listing['test'][0]
  return {'train': FileSource(*listing['train']), 'test': FileSource(*listing['test']),
          'class_names': tuple(listing['class_names']), 'mode': folder.image_mode(paths)}


def tfds_sources(name: str, data_dir: str = '') -> dict:
  """{'train': TfdsSource, 'test': TfdsSource, 'class_names', 'mode'} of a TFDS dataset."""
  from classbias_jax.data import tfds_source
  opened = tfds_source.open_sources(name, data_dir)
  keys = opened['image_key'], opened['label_key']
  return {'train': TfdsSource(opened['train'], *keys), 'test': TfdsSource(opened['test'], *keys),
          'class_names': opened['class_names'], 'mode': opened['mode']}


def _parse_absl_flags():
  # grain's worker processes read absl flags and die if they were never parsed.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


def pipeline(source, *, batch_size: int, image_size: int = 0, mode: str = 'RGB',
             seed: int = 0, num_epochs: int | None = None, shuffle: bool = True,
             drop_remainder: bool = True, num_threads: int = 0, num_workers: int = 0,
             ) -> grain.IterDataset:
  """A grain dataset of batches {'image': uint8 [B, S, S, C], 'label': int32 [B]}.

  source: random-access, item = (path | encoded bytes | uint8 array, label).
  image_size: S (0 = native, which must be one size). num_epochs: None = forever.
  num_threads: reader threads per process, 0 = one per CPU (PIL decodes outside the GIL,
  so threads scale). num_workers > 0 also runs the pipeline in that many processes;
  `main` measures both.
  """
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.map(Decode(mode, image_size))
  # Batch before repeat: batches stay within an epoch; repeat reshuffles each epoch.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate)
  ds = ds.repeat(num_epochs)
  threads = num_threads or os.cpu_count() or 1
  # Elements here are whole batches: a few per thread keeps memory small (224px x 256 is
  # 38 MB a batch) while every thread has work.
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
  it_ds = ds.to_iter_dataset(read)
  if num_workers > 0:
    _parse_absl_flags()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it_ds


def steps_per_epoch(source, batch_size: int, drop_remainder: bool = True) -> int:
  """Batches per epoch of `pipeline(source, batch_size=..., drop_remainder=...)`."""
  n = len(source)
  return n // batch_size if drop_remainder else -(-n // batch_size)


# ---- throughput measurement ------------------------------------------------------------

def _smooth_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """uint8 [count, height, width, 3] of smooth random images (compress like photos)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
  return np.stack([np.asarray(folder.open_image(c).resize((width, height), 2), np.uint8)
                   for c in coarse])  # 2 = PIL bilinear.


def write_jpeg_folder(root: str, count: int, height: int, width: int, classes: int = 10):
  """Writes `count` JPEGs of height x width into root/<class>/ (a flat folder dataset)."""
  images = _smooth_images(count, height, width)
  for i, image in enumerate(images):
    directory = os.path.join(root, f'class{i % classes}')
    os.makedirs(directory, exist_ok=True)
    folder.open_image(image).save(os.path.join(directory, f'{i:06d}.jpg'), quality=90)


def measure(source, *, batch_size: int, image_size: int, seconds: float = 2.0,
            **kwargs) -> float:
  """Steady-state images/s of `pipeline(source, ...)`, timed over `seconds` after the
  prefetch buffer has been drained once (so work done before timing is not counted)."""
  import time
  kwargs.setdefault('num_threads', os.cpu_count() or 1)
  it = iter(pipeline(source, batch_size=batch_size, image_size=image_size, **kwargs))
  for _ in range(2 * kwargs['num_threads'] + 1):
    next(it)
  start, images = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    images += len(next(it)['label'])
  return images / (time.perf_counter() - start)


def main(argv: Sequence[str] = ()) -> dict[str, float]:
  """Measures streamed images/s from JPEG folders: 32x32 (CIFAR-like) and 224x224 inputs,
  and 500x375 inputs resized to 224 (ImageNet-like), for a few thread/worker settings."""
  import tempfile
  del argv
  cases = ((32, 32, 32, 2048, 256), (224, 224, 224, 512, 64), (375, 500, 224, 512, 64))
  results = {}
  with tempfile.TemporaryDirectory() as root:
    for height, width, size, count, batch in cases:
      directory = os.path.join(root, f'{height}x{width}')
      write_jpeg_folder(directory, count, height, width)
      train = folder_sources(directory)['train']
      for threads, workers in ((1, 0), (2, 0), (4, 0), (1, 2)):
        # Best of three: the figure that other load on the machine disturbed least.
        rate = max(measure(train, batch_size=batch, image_size=size, num_threads=threads,
                           num_workers=workers) for _ in range(3))
        key = (f'{width}x{height} jpeg -> {size}x{size}, batch {batch}, {threads} threads, '
               f'{workers} workers')
        results[key] = rate
        print(f'{key}: {rate:,.0f} images/s', flush=True)
  return results


if __name__ == '__main__':
  main(sys.argv)
