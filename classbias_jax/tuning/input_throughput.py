"""Streamed-input throughput: images/s of the grain pipeline (data/stream.py) reading JPEG
folders, for a few reader thread / worker process settings.

    python -m classbias_jax.tuning.input_throughput   # 32x32, 224x224 and 500x375 -> 224
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from classbias_jax.data import folder, item_sources, stream


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
  """Steady-state images/s of `stream.pipeline(source, ...)`, timed over `seconds` after
  the prefetch buffer has been drained once (so work done before timing is not counted)."""
  kwargs.setdefault('num_threads', os.cpu_count() or 1)
  it = iter(stream.pipeline(source, batch_size=batch_size, image_size=image_size, **kwargs))
  for _ in range(2 * kwargs['num_threads'] + 1):
    next(it)
  start, images = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    images += len(next(it)['label'])
  return images / (time.perf_counter() - start)


def main(argv: Sequence[str] = ()) -> dict[str, float]:
  """Measures streamed images/s from JPEG folders: 32x32 (CIFAR-like) and 224x224 inputs,
  and 500x375 inputs resized to 224 (ImageNet-like), for a few thread/worker settings."""
  del argv
  cases = ((32, 32, 32, 2048, 256), (224, 224, 224, 512, 64), (375, 500, 224, 512, 64))
  results = {}
  with tempfile.TemporaryDirectory() as root:
    for height, width, size, count, batch in cases:
      directory = os.path.join(root, f'{height}x{width}')
      write_jpeg_folder(directory, count, height, width)
      train = item_sources.folder_sources(directory)['train']
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
