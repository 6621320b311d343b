"""Image-folder datasets (`data.name = 'folder:PATH'`) and the image helpers all sources share.

Two layouts, one subfolder per class of JPEG/PNG files (extensions in any case: .JPEG):
  PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg   (the given split is used), or
  PATH/<class>/*.jpg                                      (20% of each class is test).
Class names are the sorted subfolder names of the training images. In the first layout
`val/` is the test folder when there is no `test/`, as in ImageNet's usual layout
(PATH/train/<wnid>/*.JPEG, PATH/val/<wnid>/*.JPEG); a val/ of loose files (ImageNet's
validation images as distributed, before they are sorted into class folders) is an error.

The flat layout's test split is stratified and fixed by the file names alone (each class's
files are ordered by a hash of their name and the first 20% are test), so it does not
move with `data.split_seed` and adding a file moves at most a few others.

Images are decoded with PIL and converted to RGB, or to greyscale when every image is
greyscale. With `data.image_size` = S > 0 every image is resized to S x S (bilinear,
antialiased) without cropping: the aspect ratio is not kept, and nothing of the object
is cut away, which matters when the study measures per-class accuracy. With S = 0 all
images must already have one size.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent import futures

import numpy as np
from PIL import Image

from classbias_jax.data import splits
from classbias_jax.data.dataset import Dataset
from classbias_jax.errors import ConfigError, DataUnavailable

EXTENSIONS = ('.jpg', '.jpeg', '.png')
TEST_FRACTION = 0.2
TEST_FOLDERS = ('test', 'val')  # the first one present is the test split
_GREY_MODES = ('1', 'L', 'LA')
# PIL releases the GIL while decoding, so a few threads help even on 2 cores.
_THREADS = 4


# ---- image helpers (also used by the TFDS, IDX and streaming code) -----------------

def open_image(item) -> Image.Image:
  """A PIL image from a path, encoded bytes, a PIL image or a uint8 array [H, W(, C)]."""
  if isinstance(item, Image.Image):
    return item
  if isinstance(item, np.ndarray):
    return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item)
  if isinstance(item, (bytes, bytearray)):
    return Image.open(io.BytesIO(item))
  return Image.open(item)


def to_array(item, mode: str = 'RGB', size: int = 0) -> np.ndarray:
  """Decodes `item` (see `open_image`) to uint8 [H, W, C]; C = 1 for mode 'L', else 3.

  size > 0: resized to [size, size, C], bilinear with antialiasing, no crop.
  """
  image = open_image(item)
  if image.mode != mode:
    image = image.convert(mode)
  if size and image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, size, size, C] (no-op when already that size)."""
  if not size or images.shape[1:3] == (size, size):
    return images
  mode = 'L' if images.shape[-1] == 1 else 'RGB'
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    out[i] = to_array(image, mode, size)
  return out


def stack(images: list[np.ndarray], what: str) -> np.ndarray:
  """Stacks uint8 [H, W, C] arrays to [N, H, W, C]; ConfigError when their sizes differ."""
  shapes = {image.shape for image in images}
  if len(shapes) > 1:
    a, b = sorted(shapes)[:2]
    raise ConfigError(f'{what}: images have different sizes ({a[1]}x{a[0]} and {b[1]}x{b[0]}, '
                      f'...); set data.image_size to resize them to one size')
  if not images:
    raise DataUnavailable(f'{what}: no images')
  return np.stack(images)


# ---- the folder source --------------------------------------------------------------

def _image_files(directory: str) -> list[str]:
  return sorted(f for f in os.listdir(directory)
                if f.lower().endswith(EXTENSIONS) and not f.startswith('.'))


def _class_dirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if not d.startswith('.') and os.path.isdir(os.path.join(directory, d)))


def list_split(directory: str, class_names: list[str] | None = None,
               ) -> tuple[list[str], np.ndarray, list[str]]:
  """Files of `directory/<class>/`: (paths [N], int32 labels [N], class names).

  With `class_names` given (the training classes), a class folder outside them is an error.
  """
  found = _class_dirs(directory)
  names = list(class_names) if class_names is not None else found
  unknown = sorted(set(found) - set(names))
  if unknown:
    raise ConfigError(f'{directory}: class folders {unknown} are not among the training classes')
  paths, labels = [], []
  for label, name in enumerate(names):
    sub = os.path.join(directory, name)
    files = _image_files(sub) if os.path.isdir(sub) else []
    if not files and class_names is None:
      raise DataUnavailable(f'{sub}: no {"/".join(EXTENSIONS)} files in class folder')
    paths += [os.path.join(sub, f) for f in files]
    labels += [label] * len(files)
  return paths, np.asarray(labels, np.int32), names


def _hash_order(path: str) -> bytes:
  return hashlib.sha1(os.path.basename(path).encode()).digest()


def split_flat(paths: list[str], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Indices (train, test) of a flat folder: per class, the first 20% by name hash is test."""
  quotas = splits.class_quotas(labels, round(TEST_FRACTION * len(labels)))
  test, train = splits.take_per_class(
      labels, quotas, lambda members: sorted(members, key=lambda i: _hash_order(paths[i])))
  return train, test


def image_mode(paths: list[str]) -> str:
  """'L' when every image is greyscale, else 'RGB' (reads headers only)."""
  return image_mode_and_sizes(paths)[0]


def image_mode_and_sizes(paths: list[str]) -> tuple[str, set[tuple[int, int]]]:
  """(mode as `image_mode`, the set of (height, width) of the images): headers only, so
  the streamed mode knows its image shape without decoding a single image."""
  def header(path):
    try:
      with Image.open(path) as image:
        return image.mode, image.size
    except (OSError, ValueError) as e:
      raise DataUnavailable(f'{path}: cannot read image ({e})') from None
  with futures.ThreadPoolExecutor(_THREADS) as pool:
    headers = list(pool.map(header, paths))
  modes = {mode for mode, _ in headers}
  mode = 'L' if modes <= set(_GREY_MODES) else 'RGB'
  return mode, {(height, width) for _, (width, height) in headers}


def decode_files(paths: list[str], mode: str, size: int, what: str) -> np.ndarray:
  """Decodes image files to uint8 [N, H, W, C] (see `to_array`)."""
  def decode(path):
    try:
      return to_array(path, mode, size)
    except (OSError, ValueError) as e:
      raise DataUnavailable(f'{path}: cannot decode image ({e})') from None
  with futures.ThreadPoolExecutor(_THREADS) as pool:
    return stack(list(pool.map(decode, paths)), what)


def test_folder(path: str) -> str:
  """PATH/test, else PATH/val (ImageNet's name for it); DataUnavailable when neither is
  there or when it holds loose image files instead of class folders."""
  for name in TEST_FOLDERS:
    test_dir = os.path.join(path, name)
    if os.path.isdir(test_dir):
      break
  else:
    raise DataUnavailable(f'folder:{path}: has train/ but no test/ or val/ subfolder')
  if not _class_dirs(test_dir) and _image_files(test_dir):
    # A silently empty test split would make every accuracy 0/0.
    raise DataUnavailable(f'folder:{path}: {name}/ holds image files but no class folders; '
                          f'move each into {name}/<class>/ as in train/')
  return test_dir


def find(path: str) -> dict:
  """Lists a folder dataset without decoding: {'train': (paths, labels), 'test': ...,
  'class_names': [...]}. Raises DataUnavailable / ConfigError for unusable folders."""
  if not os.path.isdir(path):
    raise DataUnavailable(f'folder:{path}: no such directory')
  if os.path.isdir(os.path.join(path, 'train')):
    test_dir = test_folder(path)
    train_paths, train_labels, names = list_split(os.path.join(path, 'train'))
    test_paths, test_labels, _ = list_split(test_dir, names)
  else:
    paths, labels, names = list_split(path)
    train, test = split_flat(paths, labels)
    train_paths, train_labels = [paths[i] for i in train], labels[train]
    test_paths, test_labels = [paths[i] for i in test], labels[test]
  if not names:
    raise DataUnavailable(f'folder:{path}: no class subfolders')
  return {'train': (train_paths, train_labels), 'test': (test_paths, test_labels),
          'class_names': names}


def load(cfg) -> Dataset:
  """`data.name = 'folder:PATH'` -> Dataset (uses data.image_size; see module docstring)."""
  name = cfg.name
  path = os.path.expanduser(name.split(':', 1)[1])
  listing = find(path)
  (train_paths, train_labels), (test_paths, test_labels) = listing['train'], listing['test']
  mode = image_mode(train_paths + test_paths)
  size = int(getattr(cfg, 'image_size', 0) or 0)
  train_images = decode_files(train_paths, mode, size, name)
  test_images = (decode_files(test_paths, mode, size, name) if test_paths
                 else np.zeros((0,) + train_images.shape[1:], np.uint8))
  if test_images.shape[1:] != train_images.shape[1:]:
    raise ConfigError(f'{name}: train images are {train_images.shape[1:]}, test images '
                      f'{test_images.shape[1:]}; set data.image_size to resize them to one size')
  return Dataset(name=name, train_images=train_images, train_labels=train_labels,
                 test_images=test_images, test_labels=test_labels,
                 class_names=tuple(listing['class_names']))
