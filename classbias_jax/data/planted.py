"""The planted dataset: 32x32 RGB images whose class dependence is known by construction.

Ten classes, three kinds; the kind is the prefix of the class name:
  color-red, color-orange, color-yellow   the same striped blob, told apart ONLY by its hue
      (0.00, 0.07, 0.14 of the hue circle). Colour jitter (hue +-0.2s, saturation and
      brightness) makes them ambiguous, so strong jitter should hurt these classes.
  crop-top, crop-bottom, crop-side        the same checkered square in the centre, told
      apart ONLY by a small 4x4 white marker on the top edge, the bottom edge, or the left
      or right edge (either, so a horizontal flip keeps the class). Aggressive random
      resized crops cut the marker out, so small crop scales should hurt these classes.
  none-disc, none-square, none-triangle, none-cross  large shapes in random colours on
      random backgrounds: robust to colour jitter and (mostly) to cropping.
Every image has a random background colour and pixel noise; objects are placed with a
random offset and size. Generation is vectorised numpy, deterministic given the seed,
and takes about a second for 12k images.
"""
from __future__ import annotations

import colorsys

import numpy as np

from classbias_jax.data import Dataset

CLASS_NAMES = ('color-red', 'color-orange', 'color-yellow',
               'crop-top', 'crop-bottom', 'crop-side',
               'none-disc', 'none-square', 'none-triangle', 'none-cross')
SIZE = 32
_COLOR_HUES = (0.0, 0.07, 0.14)


def _hsv_to_rgb(h, s, v) -> np.ndarray:
  """Vectorised HSV -> RGB: arrays [N] in [0, 1] -> [N, 3]."""
  return np.stack([np.array(colorsys.hsv_to_rgb(*t)) for t in zip(h, s, v)]) if len(h) else (
      np.zeros((0, 3)))


def _paint(images, mask, rgb):
  """images [N,H,W,3] <- rgb [N,3] where mask [N,H,W]."""
  return np.where(mask[..., None], rgb[:, None, None, :], images)


def _shape_masks(kind, rng, n):
  """Boolean masks [n, H, W] of one shape kind, with random centre and size."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
  cy = SIZE / 2 + rng.uniform(-3, 3, (n, 1, 1))
  cx = SIZE / 2 + rng.uniform(-3, 3, (n, 1, 1))
  r = rng.uniform(9, 12, (n, 1, 1))
  dy, dx = yy - cy, xx - cx
  if kind == 'disc':
    return dy ** 2 + dx ** 2 <= r ** 2
  if kind == 'square':
    return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
  if kind == 'triangle':
    return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
  if kind == 'cross':
    arm = r * 0.35
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
  if kind == 'stripes':  # a disc filled with diagonal stripes (the colour classes' object)
    return (dy ** 2 + dx ** 2 <= r ** 2) & (((yy + xx) // 3) % 2 == 0)
  if kind == 'checker':  # a checkered square (the crop classes' object)
    return (np.abs(dy) <= r * 0.7) & (np.abs(dx) <= r * 0.7) & (((yy // 4) + (xx // 4)) % 2 == 0)
  raise ValueError(kind)


def _marker_mask(position, rng, n):
  """4x4 marker masks [n, H, W] on one edge of the image."""
  mask = np.zeros((n, SIZE, SIZE), bool)
  along = rng.integers(6, SIZE - 10, n)
  side = rng.integers(0, 2, n)  # for 'side': left or right edge
  for i in range(n):
    a = along[i]
    if position == 'top':
      mask[i, 0:4, a:a + 4] = True
    elif position == 'bottom':
      mask[i, SIZE - 4:, a:a + 4] = True
    else:
      cols = slice(0, 4) if side[i] == 0 else slice(SIZE - 4, SIZE)
      mask[i, a:a + 4, cols] = True
  return mask


def generate(num_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [10 * num_per_class, 32, 32, 3] and labels int32, class-sorted."""
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for label, name in enumerate(CLASS_NAMES):
    kind, detail = name.split('-')
    n = num_per_class
    background = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 0.5, n), rng.uniform(0.1, 0.5, n))
    img = np.broadcast_to(background[:, None, None, :], (n, SIZE, SIZE, 3)).copy()
    if kind == 'color':
      hue = (_COLOR_HUES[label] + rng.uniform(-0.01, 0.01, n)) % 1.0
      fg = _hsv_to_rgb(hue, rng.uniform(0.75, 1.0, n), rng.uniform(0.75, 1.0, n))
      img = _paint(img, _shape_masks('stripes', rng, n), fg)
    elif kind == 'crop':
      fg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.3, 1.0, n), rng.uniform(0.7, 1.0, n))
      img = _paint(img, _shape_masks('checker', rng, n), fg)
      img = _paint(img, _marker_mask(detail, rng, n), np.ones((n, 3)))
    else:
      fg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.3, 1.0, n), rng.uniform(0.7, 1.0, n))
      img = _paint(img, _shape_masks(detail, rng, n), fg)
    img = img + rng.normal(0, 0.06, img.shape)
    images.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
    labels.append(np.full(n, label, np.int32))
  return np.concatenate(images), np.concatenate(labels)


def load(data_config) -> Dataset:
  """Train (`data.planted_train_per_class` per class) and test (200 per class) splits.

  Train and test come from different seeds; both are deterministic given `data.split_seed`.
  """
  per_class = int(data_config.get('planted_train_per_class', 500))
  seed = int(data_config.get('split_seed', 0))
  train_x, train_y = generate(per_class, seed=2 * seed + 1)
  test_x, test_y = generate(200, seed=2 * seed + 2)
  return Dataset('planted', train_x, train_y, test_x, test_y, CLASS_NAMES)
