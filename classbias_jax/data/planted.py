"""The planted dataset: RGB images whose class dependence is known by construction.

Ten classes, three kinds; the kind is the prefix of the class name:
  color-red, color-orange, color-yellow   the same disc with diagonal stripes, told apart
      ONLY by its hue (0.00, 0.07, 0.14 of the hue circle). Colour jitter (hue +-0.2s,
      saturation and brightness) makes them ambiguous, so strong jitter hurts them.
  crop-top, crop-bottom, crop-plain       the same plain square, told apart ONLY by tiny
      white markers in both top corners, in both bottom corners, or by having none. A
      random resized crop keeps a corner only when it starts in it: at scale 0.08 about
      one view in seven shows a marker (every view at scale 1), too few to learn the cue,
      so these classes stay confused with each other.
  none-hlines, none-vlines, none-rings, none-dots   a large region filled with a texture
      (horizontal or vertical stripes, concentric rings, a lattice of dots) in a random
      colour: every part of the image shows the class, whatever its hue, so these classes
      are robust to colour jitter and to cropping.
`data.planted_rare = n` (0: off) leaves none-rings and none-dots only n training images
each (test keeps 200): a rare family, easy textures learnt from few images. Pruning hurts
it (configs/prune.py): features that serve few training images get small weights, which
magnitude pruning removes first (Hooker et al. 2020 find compression hurts the
underrepresented most; Tran et al. 2022 tie pruning's disparate impact to group size).
Label smoothing hurts it too (configs/smooth.py): every image's target is pulled toward
uniform by the same amount, and a class seen in 20 images is lost to the frequent ones.
`data.planted_mixed = 'blend'` or `'paste'` adds an eleventh class with
`data.planted_mixed_train` training images (200 in test), built to be hurt by mixing
(configs/mixup.py): mix-blend is a none-hlines image blended with a none-vlines image
(weight 0.4-0.6), exactly what Mixup makes when it pairs those two classes, which it then
labels part hlines, part vlines; mix-paste is a none-hlines image with a box of a
none-vlines image pasted in (timm's CutMix box at lambda 0.3-0.7), what CutMix makes of
the same pair. Mixing thus trains the network to answer "hlines or vlines" on exactly
this class's images; rarer than the two (60 images against 200 in the studies), it loses.
The colour and crop families were expected to suffer from mixing too (a red and a yellow
disc blended half and half look orange; CutMix's box can cover a crop- marker), but
measured at 8 seeds they do not: mixing helps the crop- classes (every seed then learns
the markers) and costs color-orange at most 2 points, not flagged.
Every image has a random background colour and pixel noise; objects are placed with a
random offset and size. Images are drawn at 32x32; `data.image_size` 16 (or 8) averages
blocks of pixels. Generation is vectorised numpy and deterministic given the seed.

`data.name = 'planted_folder'`: the same images written once as JPEG files in ImageNet's
folder layout (train/<class>/*.JPEG, val/<class>/*.JPEG, each image enlarged to its own
size between 40 and 64 pixels a side, as ImageNet's sizes vary) and then read through the
`folder:` source, so that a CPU run goes through the code an ImageNet folder goes through
(listing, JPEG decoding, resizing to `data.image_size`, streaming). See `write_folder`.
"""
from __future__ import annotations

import colorsys
import copy
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from classbias_jax.data.dataset import Dataset
from classbias_jax.errors import ConfigError

CLASS_NAMES = ('color-red', 'color-orange', 'color-yellow',
               'crop-top', 'crop-bottom', 'crop-plain',
               'none-hlines', 'none-vlines', 'none-rings', 'none-dots')
SIZE = 32
_COLOR_HUES = (0.0, 0.07, 0.14)
_MARKER = 2  # side of a corner marker at 32x32: even, so 16x16 keeps one crisp pixel
# the crop- markers' side with the frame shortcut (a colour study, where the crop- classes
# are bystanders): large enough to be learnt within the study's epochs in every seed
_FRAME_MARKER = 4
_FRAME = 4  # width of the frame shortcut at 32x32 (data.planted_shortcut)
# its hue, one per none- class in training: 0.07 apart like the color- classes' hues, so
# that colour jitter blurs them as it blurs those; far from those (0-0.14)
_FRAME_HUES = (0.45, 0.52, 0.59, 0.66)
TEST_PER_CLASS = 200
_PERIOD = 8  # texture period of the none- classes at 32x32 (4 pixels at 16x16)
RARE_CLASSES = ('none-rings', 'none-dots')  # data.planted_rare's family
# data.planted_mixed's eleventh class: a none-hlines and a none-vlines image mixed as Mixup
# ('blend') or CutMix ('paste') would mix them (_draw_mixed)
MIXED_CLASSES = {'blend': 'mix-blend', 'paste': 'mix-paste'}


def _hsv_to_rgb(h, s, v) -> np.ndarray:
  """Vectorised HSV -> RGB: arrays [N] in [0, 1] -> [N, 3]."""
  return np.stack([np.array(colorsys.hsv_to_rgb(*t)) for t in zip(h, s, v)]) if len(h) else (
      np.zeros((0, 3)))


def _paint(images, mask, rgb):
  """images [N,H,W,3] <- rgb [N,3] where mask [N,H,W]."""
  return np.where(mask[..., None], rgb[:, None, None, :], images)


def _grid(rng, n, radius):
  """Pixel-centre coordinates relative to a random centre, and radii [n, 1, 1]."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
  cy = SIZE / 2 + rng.uniform(-3, 3, (n, 1, 1))
  cx = SIZE / 2 + rng.uniform(-3, 3, (n, 1, 1))
  return yy, xx, yy - cy, xx - cx, rng.uniform(*radius, (n, 1, 1))


def _object_mask(kind, rng, n, period=_PERIOD):
  """Boolean masks [n, H, W] of one object kind, with random centre and size (the none-
  textures repeat every `period` pixels)."""
  if kind == 'stripes':  # a disc of diagonal stripes (the colour classes' object)
    yy, xx, dy, dx, r = _grid(rng, n, (9, 12))
    return (dy ** 2 + dx ** 2 <= r ** 2) & (((yy + xx) // 3) % 2 == 0)
  if kind == 'square':  # a plain square (the crop classes' object)
    _, _, dy, dx, r = _grid(rng, n, (9, 12))
    return (np.abs(dy) <= r * 0.7) & (np.abs(dx) <= r * 0.7)
  # The none- textures fill a large disc; random phases, so no pixel is always painted.
  yy, xx, dy, dx, r = _grid(rng, n, (12, 15))
  region = dy ** 2 + dx ** 2 <= r ** 2
  phase_y, phase_x = (rng.integers(0, period, (n, 1, 1)) for _ in range(2))
  on_y = (yy - 0.5 + phase_y) % period < period / 2
  on_x = (xx - 0.5 + phase_x) % period < period / 2
  if kind == 'hlines':
    return region & on_y
  if kind == 'vlines':
    return region & on_x
  if kind == 'rings':
    return region & (np.sqrt(dy ** 2 + dx ** 2) % period < period / 2)
  if kind == 'dots':
    return region & on_y & on_x
  raise ValueError(kind)


def _marker_mask(position, n, side=_MARKER):
  """Marker masks [n, H, W]: both top corners, both bottom corners, or none ('plain').

  Both corners of a side, so a horizontal flip keeps the class and the cue sits at a
  fixed place: the classes learn it fast without crops, and crops rarely show it."""
  mask = np.zeros((n, SIZE, SIZE), bool)
  if position != 'plain':
    rows = slice(0, side) if position == 'top' else slice(SIZE - side, SIZE)
    mask[:, rows, :side] = True
    mask[:, rows, SIZE - side:] = True
  return mask


def _downsample(images: np.ndarray, size: int) -> np.ndarray:
  """[N, 32, 32, 3] -> [N, size, size, 3] by averaging blocks (size must divide 32)."""
  if size == SIZE:
    return images
  if size < 1 or SIZE % size:
    raise ConfigError(f'planted: data.image_size must divide {SIZE}, got {size}')
  f = SIZE // size
  return images.reshape(len(images), size, f, size, f, 3).mean(axis=(2, 4))


def _random_colors(rng, n, saturation, value):
  return _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(*saturation, n), rng.uniform(*value, n))


def _shortcut_index(label, rng, n, split: str) -> np.ndarray:
  """Which none- class's shortcut each of n images of class `label` shows: its own in
  'train', another none- class's in 'eval'."""
  k = np.full(n, label - CLASS_NAMES.index('none-hlines'))
  if split == 'eval':
    k = (k + rng.integers(1, len(_FRAME_HUES), n)) % len(_FRAME_HUES)
  return k


def _frame(images, k):
  """Paints a frame of hue _FRAME_HUES[k] [n] (saturated, bright) around each image."""
  n = len(images)
  hue = np.asarray(_FRAME_HUES)[k].astype(np.float64)
  mask = np.ones((SIZE, SIZE), bool)
  mask[_FRAME:-_FRAME, _FRAME:-_FRAME] = False
  return _paint(images, np.broadcast_to(mask, (n, SIZE, SIZE)),
                _hsv_to_rgb(hue, np.full(n, 0.9), np.full(n, 0.9)))


def generate(num_per_class: int, seed: int, size: int = SIZE, shortcut: str = '',
             mixed: str = '', mixed_count: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [10 * num_per_class (+ mixed_count), size, size, 3] and labels int32,
  class-sorted.

  Drawn at 32x32; a smaller `size` averages blocks of pixels, as if the same scene were
  photographed at a lower resolution (same draws, so the planted effects keep their
  meaning while convolutions get several times cheaper). shortcut 'frame-train',
  'frame-eval', 'size-train' or 'size-eval': the none- classes' shortcut (`load`).
  mixed 'blend' or 'paste': an eleventh class of `mixed_count` images (MIXED_CLASSES),
  drawn after the ten, so theirs are the same draws with or without it.
  """
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for label, name in enumerate(CLASS_NAMES):
    img = _draw_class(label, name, rng, num_per_class, shortcut)
    images.append(_finish(img, rng, size))
    labels.append(np.full(num_per_class, label, np.int32))
  if mixed:
    img = _draw_mixed(mixed, rng, mixed_count)
    images.append(_finish(img, rng, size, noise=False))
    labels.append(np.full(mixed_count, len(CLASS_NAMES), np.int32))
  return np.concatenate(images), np.concatenate(labels)


def _finish(img, rng, size, noise=True):
  """Pixel noise, downsampling to `size` and uint8."""
  img = _downsample(img + rng.normal(0, 0.06, img.shape) if noise else img, size)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _draw_mixed(mixed: str, rng, n: int) -> np.ndarray:
  """n images [n, 32, 32, 3] in [0, 1] of the mixed class: a none-hlines and a none-vlines
  image (each as `_draw_class` draws it) blended with a weight w ~ U(0.4, 0.6) ('blend',
  Mixup's image at lambda = w), or the hlines image with a box of the vlines image pasted
  in ('paste', CutMix's image: lambda ~ U(0.3, 0.7), a box of side 32 sqrt(1 - lambda) at a
  uniform centre, clipped at the border, as timm's rand_bbox)."""
  h_label, v_label = CLASS_NAMES.index('none-hlines'), CLASS_NAMES.index('none-vlines')
  h, v = (_draw_class(label, CLASS_NAMES[label], rng, n, '') for label in (h_label, v_label))
  h, v = (x + rng.normal(0, 0.06, x.shape) for x in (h, v))  # each its own noise, as in a mix
  if mixed == 'blend':
    w = rng.uniform(0.4, 0.6, (n, 1, 1, 1))
    return w * h + (1 - w) * v
  if mixed != 'paste':
    raise ConfigError(f"data.planted_mixed {mixed!r}; choose '', 'blend' or 'paste'")
  lam = rng.uniform(0.3, 0.7, n)
  cut = (SIZE * np.sqrt(1 - lam)).astype(int)
  cy, cx = rng.integers(0, SIZE, n), rng.integers(0, SIZE, n)
  yy, xx = np.mgrid[0:SIZE, 0:SIZE]
  y0, y1 = np.clip(cy - cut // 2, 0, SIZE), np.clip(cy + cut // 2, 0, SIZE)
  x0, x1 = np.clip(cx - cut // 2, 0, SIZE), np.clip(cx + cut // 2, 0, SIZE)
  box = ((yy >= y0[:, None, None]) & (yy < y1[:, None, None])
         & (xx >= x0[:, None, None]) & (xx < x1[:, None, None]))
  return np.where(box[..., None], v, h)


def _draw_class(label: int, name: str, rng, n: int, shortcut: str) -> np.ndarray:
  """n noiseless images [n, 32, 32, 3] in [0, 1] of class `name`."""
  kind, detail = name.split('-')
  background = _random_colors(rng, n, (0, 0.5), (0.1, 0.5))
  img = np.broadcast_to(background[:, None, None, :], (n, SIZE, SIZE, 3)).copy()
  if kind == 'color':
    hue = (_COLOR_HUES[label] + rng.uniform(-0.01, 0.01, n)) % 1.0
    fg = _hsv_to_rgb(hue, rng.uniform(0.75, 1.0, n), rng.uniform(0.75, 1.0, n))
    img = _paint(img, _object_mask('stripes', rng, n), fg)
  elif kind == 'crop':
    img = _paint(img, _object_mask('square', rng, n), _random_colors(rng, n, (0.3, 1), (0.7, 1)))
    side = _FRAME_MARKER if shortcut.startswith('frame') else _MARKER
    img = _paint(img, _marker_mask(detail, n, side), np.ones((n, 3)))
  else:
    cut, split = shortcut.split('-') if shortcut else ('', '')
    k = _shortcut_index(label, rng, n, split) if cut == 'frame' else None
    # The lines seen twice as close (period 16 at 32x32, not 8).
    zoom = 2 if shortcut == 'zoom-eval' and detail.endswith('lines') else 1
    period = zoom * _PERIOD
    mask = _object_mask(detail, rng, n, period)
    img = _paint(img, mask, _random_colors(rng, n, (0.3, 1), (0.7, 1)))
    if cut == 'frame':
      img = _frame(img, k)
  return img


def load(data_config) -> Dataset:
  """Train (`data.planted_train_per_class` per class) and test (200 per class) splits,
  32x32 or `data.image_size` (16, 8, ...).

  Train and test come from different seeds; both are deterministic given `data.split_seed`.

  `data.planted_shortcut` makes a knob help some none- classes while it hurts others, as
  a fix study needs (a sweep where a per-class choice can beat every uniform value):
    'frame'  in training each none- class has a frame of its own hue (0.07 apart), in
             validation and test another none- class's: a model that learnt the frame,
             an easier cue than the texture, fails there. Colour jitter's hue shift blurs
             the frame hues, so the jitter makes the texture the cue worth learning; it
             still hurts the color- classes. The crop- classes, bystanders here, get
             markers twice as large (4 pixels a side at 32x32), which every seed learns
             within a colour study's 10 epochs (with the usual 2-pixel ones some seeds
             never learnt them, whatever the jitter).
    'zoom'   validation and test show none-hlines and none-vlines twice as close
             (stripes of period 16 at 32x32, not 8): random-resized crops, which zoom in
             during training, teach the stripes at that scale; they still hurt the
             crop- classes more than they help these two, so the best uniform value
             is "no crop" and the fix is to crop the two classes alone.
  With a shortcut, the validation split (`data.val_fraction` of the training images per
  class, at least one) is drawn like test, not carved from train.
  """
  per_class = int(data_config.get('planted_train_per_class', 500))
  seed = int(data_config.get('split_seed', 0))
  size = int(data_config.get('image_size', 0) or SIZE)
  kind = data_config.get('planted_shortcut', '') or ''
  if kind not in ('', 'frame', 'zoom'):
    raise ConfigError(f"data.planted_shortcut {kind!r}; choose '', 'frame' or 'zoom'")
  train, test = (f'{kind}-{split}' if kind else '' for split in ('train', 'eval'))
  mixed = data_config.get('planted_mixed', '') or ''
  if mixed not in ('', *MIXED_CLASSES):
    raise ConfigError(f"data.planted_mixed {mixed!r}; choose '', 'blend' or 'paste'")
  mixed_train = int(data_config.get('planted_mixed_train', 0) or 0)
  if mixed and not 0 < mixed_train <= per_class:
    raise ConfigError(f'data.planted_mixed_train {mixed_train} must be in 1..{per_class} '
                      '(data.planted_train_per_class) with data.planted_mixed')
  train_x, train_y = generate(per_class, seed=2 * seed + 1, size=size, shortcut=train,
                              mixed=mixed, mixed_count=mixed_train)
  train_x, train_y = _make_rare(train_x, train_y, int(data_config.get('planted_rare', 0)),
                                per_class)
  test_x, test_y = generate(TEST_PER_CLASS, seed=2 * seed + 2, size=size, shortcut=test,
                            mixed=mixed, mixed_count=TEST_PER_CLASS)
  val = {}
  fraction = float(data_config.get('val_fraction', 0.0))
  if kind and fraction > 0:
    n_val = max(1, round(fraction * per_class))
    val_x, val_y = generate(n_val, seed=2 * seed + 1001, size=size, shortcut=test,
                            mixed=mixed, mixed_count=n_val)
    val = {'val_images': val_x, 'val_labels': val_y}
  names = CLASS_NAMES + ((MIXED_CLASSES[mixed],) if mixed else ())
  return Dataset('planted', train_x, train_y, test_x, test_y, names, **val)


def _make_rare(images, labels, rare: int, per_class: int):
  """Keeps the first `rare` training images of each RARE_CLASSES class (0: all)."""
  if not rare:
    return images, labels
  if not 0 < rare <= per_class:
    raise ConfigError(f'data.planted_rare {rare} must be in 0..{per_class} '
                      '(data.planted_train_per_class)')
  rank = np.arange(len(labels)) - np.searchsorted(labels, labels)  # index within its class
  rare_class = np.isin(labels, [CLASS_NAMES.index(n) for n in RARE_CLASSES])
  keep = ~rare_class | (rank < rare)
  return images[keep], labels[keep]


# ---- the planted images as an ImageNet-layout folder --------------------------------------

FOLDER_NAME = 'imagenet_layout_planted'
_FOLDER_SIZES = (40, 64)  # the range of stored sides, like ImageNet's mixed image sizes
_FOLDER_VERSION = 1  # part of the folder's name: a change to what is written gets a new one


def folder_path(data_config) -> str:
  """Where `write_folder` puts the dataset: one folder per (training size, split seed) under
  data.data_dir, else $CLASSBIAS_CACHE_DIR, else ~/.cache/classbias_jax."""
  root = (getattr(data_config, 'data_dir', '') or os.environ.get('CLASSBIAS_CACHE_DIR')
          or os.path.join('~', '.cache', 'classbias_jax'))
  per_class = int(data_config.get('planted_train_per_class', 500))
  seed = int(data_config.get('split_seed', 0))
  return os.path.join(os.path.expanduser(root), FOLDER_NAME,
                      f'v{_FOLDER_VERSION}-train{per_class}-seed{seed}')


def _write_split(directory: str, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
  """class folders of `<class>_<index>.JPEG` files, each image enlarged to a random size."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(_FOLDER_SIZES[0], _FOLDER_SIZES[1] + 1, (len(images), 2))
  for name in CLASS_NAMES:
    os.makedirs(os.path.join(directory, name))
  for i, (image, label) in enumerate(zip(images, labels)):
    name = CLASS_NAMES[label]
    big = Image.fromarray(image).resize(tuple(int(s) for s in sizes[i]), Image.BICUBIC)
    big.save(os.path.join(directory, name, f'{name}_{i:05d}.JPEG'), quality=95)


def write_folder(data_config) -> str:
  """The planted dataset as train/ and val/ folders of JPEG files (see the module docstring):
  written on first use at `folder_path`, then reused. Returns the folder.

  Written into a temporary folder beside it and renamed into place, so an interrupted
  write leaves no partial dataset (a leftover temporary folder is never read).
  """
  path = folder_path(data_config)
  if os.path.isdir(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  per_class = int(data_config.get('planted_train_per_class', 500))
  seed = int(data_config.get('split_seed', 0))
  tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix='.tmp-')
  try:
    for split, n, draw in (('train', per_class, 2 * seed + 1), ('val', TEST_PER_CLASS, 2 * seed + 2)):
      images, labels = generate(n, seed=draw)
      _write_split(os.path.join(tmp, split), images, labels, seed=draw)
    os.rename(tmp, path)
  except OSError:
    if not os.path.isdir(path):  # else another process wrote it first: use theirs
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def as_folder_config(data_config):
  """A copy of `data_config` naming the written folder (`folder:PATH`) for 'planted_folder'."""
  resolved = copy.deepcopy(data_config)
  resolved.name = f'folder:{write_folder(data_config)}'
  return resolved
