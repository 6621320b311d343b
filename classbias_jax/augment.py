"""Image augmentations with torchvision.transforms.v2 semantics, in pure JAX.

Every op acts on ONE float32 image [H, W, C] (C = 1 or 3, values in [0, 1]), jits and
vmaps, and takes an explicit key when it is random. Strengths, probabilities and boxes
may be traced arrays, so one compiled program serves a whole sweep of models.

Common random numbers: every random parameter is drawn as a uniform that does not depend
on the strength and is then mapped (factor = lo + (hi - lo) * u), so two models that share
a key but differ in a strength see coupled draws; only the knob differs between them.

The batched entry points `augment_batch` and `erase_batch` take knobs that are either a
scalar (one value for the model) or a per-class table [num_classes] looked up by each
image's label; under `jax.vmap` over models these carry a leading model axis.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from classbias_jax import color, configs

# The ops of `augment_batch`, in the order they are applied.
OPS = ('pad_crop', 'crop', 'flip', 'color')

# torchvision's get_params loops: at most this many tries before the fallback box.
_TRIES = 10

# ------------------------------------------------------------------------------ geometry


def _resize_weights(start, length, in_size: int, out_size: int):
  """float32 [out_size, in_size]: resampling of the span [start, start+length) of an axis.

  torch's bilinear interpolate with antialias=True applied to the cropped span: a
  triangle kernel centred at start + scale*(i + 0.5), widened by scale = length/out_size
  when downscaling, pixels outside the span get no weight, and each row is normalised.
  Fractional spans weight their edge pixels by the fraction of the pixel they cover, so
  the result is continuous in the box and exact for integer boxes.
  """
  start = jnp.asarray(start, jnp.float32)
  length = jnp.asarray(length, jnp.float32)
  scale = length / out_size
  support = jnp.maximum(scale, 1.0)
  centre = start + scale * (jnp.arange(out_size, dtype=jnp.float32) + 0.5)
  pixel = jnp.arange(in_size, dtype=jnp.float32) + 0.5
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(pixel[None, :] - centre[:, None]) / support)
  cover = jnp.clip(jnp.minimum(pixel + 0.5, start + length) - jnp.maximum(pixel - 0.5, start),
                   0.0, 1.0)
  weights = weights * cover[None, :]
  total = jnp.sum(weights, axis=1, keepdims=True)
  return weights / jnp.where(total > 0, total, 1.0)


def resized_crop(img, top, left, height, width, size: Sequence[int]):
  """[H, W, C] -> [size[0], size[1], C]: crop the box, then bilinear resize (antialiased).

  As torchvision's resized_crop with BILINEAR and antialias=True. The box may be traced
  and fractional; `size` is static.
  """
  h, w, _ = img.shape
  wy = _resize_weights(top, height, h, size[0])
  wx = _resize_weights(left, width, w, size[1])
  # HIGHEST: TPUs and GPUs would otherwise multiply in bf16/tf32 (errors ~1/255).
  return jnp.einsum('oh,hwc,pw->opc', wy, img, wx, precision=lax.Precision.HIGHEST)


def erase(img, top, left, height, width, value):
  """[H, W, C] -> [H, W, C]: pixels with top <= y < top+height, left <= x < left+width
  set to `value` (a scalar or [C]). A traced box works through an index mask."""
  h, w, _ = img.shape
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
  return jnp.where(inside[..., None], jnp.asarray(value, img.dtype), img)


def hflip(key, img, p):
  """[H, W, C] -> [H, W, C]: mirrored left-right with probability p (traced allowed)."""
  return jnp.where(jax.random.uniform(key) < p, img[:, ::-1], img)


def pad_crop(key, img, padding: int):
  """[H, W, C] -> [H, W, C]: the CIFAR random crop, zero padding of static width `padding`
  on each side then a uniformly placed H x W window (RandomCrop(size, padding))."""
  if padding == 0:
    return img
  h, w, c = img.shape
  padded = jnp.pad(img, ((padding, padding), (padding, padding), (0, 0)))
  u = jax.random.uniform(key, (2,))
  top = _uniform_int(u[0], 2 * padding + 1)
  left = _uniform_int(u[1], 2 * padding + 1)
  return lax.dynamic_slice(padded, (top, left, 0), (h, w, c))


# The name `pad_crop` is also augment_batch's padding keyword.
_random_pad_crop = pad_crop


# ------------------------------------------------------------------------------ samplers


def _uniform_int(u, n):
  """Integer uniform on {0, ..., n-1} from u ~ U[0, 1) (n traced, n >= 1)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _tries(key, height: int, width: int, scale, ratio):
  """Areas [10] and aspect ratios [10] of the get_params tries, plus two placement
  uniforms: area ~ U(scale) * H * W, log aspect ~ U(log ratio)."""
  u = jax.random.uniform(key, (2 * _TRIES + 2,))
  smin, smax = (jnp.asarray(x, jnp.float32) for x in scale)
  lmin, lmax = (jnp.log(jnp.asarray(x, jnp.float32)) for x in ratio)
  area = height * width * (smin + (smax - smin) * u[:_TRIES])
  aspect = jnp.exp(lmin + (lmax - lmin) * u[_TRIES:2 * _TRIES])
  return area, aspect, u[2 * _TRIES:]


def sample_resized_crop_box(key, height: int, width: int, scale, ratio):
  """RandomResizedCrop.get_params for an image of static size height x width.

  Ten tries of w = round(sqrt(area*aspect)), h = round(sqrt(area/aspect)), all drawn at
  once; the first with 0 < w <= W and 0 < h <= H wins and is placed uniformly. With none,
  a centre crop clamped to the ratio range. `scale` and `ratio` are (min, max) pairs of
  possibly traced scalars.

  Returns: (top, left, h, w), int32 scalars.
  """
  area, aspect, u_place = _tries(key, height, width, scale, ratio)
  # Python's round and jnp.round both round half to even.
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(ok)
  found = jnp.any(ok)

  rmin = jnp.minimum(*(jnp.asarray(x, jnp.float32) for x in ratio))
  rmax = jnp.maximum(*(jnp.asarray(x, jnp.float32) for x in ratio))
  in_ratio = width / height
  too_tall = in_ratio < rmin
  too_wide = in_ratio > rmax
  fb_w = jnp.where(too_wide, jnp.round(height * rmax).astype(jnp.int32), width)
  fb_h = jnp.where(too_tall, jnp.round(width / rmin).astype(jnp.int32), height)

  h = jnp.where(found, h[first], fb_h)
  w = jnp.where(found, w[first], fb_w)
  top = jnp.where(found, _uniform_int(u_place[0], height - h + 1), (height - h) // 2)
  left = jnp.where(found, _uniform_int(u_place[1], width - w + 1), (width - w) // 2)
  return top, left, h, w


def sample_erase_box(key, height: int, width: int, scale, ratio):
  """RandomErasing.get_params for an image of static size height x width.

  Ten tries of h = round(sqrt(area*aspect)), w = round(sqrt(area/aspect)); the first with
  h < H and w < W wins and is placed uniformly. With none, an empty box (h = w = 0), which
  leaves the image unchanged as torchvision does.

  Returns: (top, left, h, w), int32 scalars.
  """
  area, aspect, u_place = _tries(key, height, width, scale, ratio)
  h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  ok = (h < height) & (w < width)
  first = jnp.argmax(ok)
  found = jnp.any(ok)
  h = jnp.where(found, h[first], 0)
  w = jnp.where(found, w[first], 0)
  top = jnp.where(found, _uniform_int(u_place[0], height - h + 1), 0)
  left = jnp.where(found, _uniform_int(u_place[1], width - w + 1), 0)
  return top, left, h, w


# ------------------------------------------------------------------------------- batches


def _per_image(knobs: Mapping[str, jnp.ndarray], names: Sequence[str], labels):
  """{name: [B, ...]}: each knob broadcast (scalar) or looked up by label (table[labels]).

  A knob not given takes its configs.KNOBS default.
  """
  out, defaults = {}, configs.defaults()
  for name in names:
    value = jnp.asarray(knobs[name] if name in knobs else defaults[name], jnp.float32)
    out[name] = (jnp.broadcast_to(value, labels.shape) if value.ndim == 0
                 else jnp.take(value, labels, axis=0))
  return out


def augment_batch(key, images, labels, knobs: Mapping[str, jnp.ndarray],
                  ops: Sequence[str], *, pad_crop: int = 4):
  """[B, H, W, C] -> [B, H, W, C]: the training augmentations, fresh parameters per image.

  Args:
    key: PRNG key for the batch; image b uses split(key, B)[b], and each op its own
      fold_in of that key, so turning one op on or off leaves the others' draws alone.
    images: float32 [B, H, W, C] in [0, 1].
    labels: int [B], to look up per-class knob tables.
    knobs: short name -> scalar or [num_classes] table, for every knob of the ops
      (configs.KNOBS; a missing one takes its default, other entries are ignored).
      'color_strength' s means ColorJitter(0.8s, 0.8s, 0.8s, 0.2s).
    ops: static subset of OPS, always applied in OPS's order: pad_crop (RandomCrop with
      zero padding), crop (RandomResizedCrop back to H x W), flip, color.
    pad_crop: static padding of the 'pad_crop' op.
  """
  unknown = set(ops) - set(OPS)
  if unknown:
    raise ValueError(f'unknown augmentation ops {sorted(unknown)}; known: {OPS}')
  _, height, width, _ = images.shape
  names = [n for op in OPS if op in ops for n in configs.knobs_of(op)]
  values = _per_image(knobs, names, labels)
  keys = jax.random.split(key, images.shape[0])

  def one(k, img, v):
    if 'pad_crop' in ops:
      img = _random_pad_crop(jax.random.fold_in(k, 0), img, pad_crop)
    if 'crop' in ops:
      box = sample_resized_crop_box(
          jax.random.fold_in(k, 1), height, width,
          (v['crop_scale_min'], v['crop_scale_max']),
          (v['crop_ratio_min'], v['crop_ratio_max']))
      img = resized_crop(img, *box, (height, width))
    if 'flip' in ops:
      img = hflip(jax.random.fold_in(k, 2), img, v['flip_prob'])
    if 'color' in ops:
      s = v['color_strength']
      img = color.color_jitter(jax.random.fold_in(k, 3), img, 0.8 * s, 0.8 * s, 0.8 * s,
                               0.2 * s)
    return img

  return jax.vmap(one)(keys, images, values)


def erase_batch(key, images, labels, knobs: Mapping[str, jnp.ndarray]):
  """[B, H, W, C] -> [B, H, W, C]: RandomErasing on normalised images, per image.

  Knobs as augment_batch's: 'erase_prob', 'erase_scale_min/max', 'erase_ratio_min/max',
  'erase_value', each a scalar or a [num_classes] table; 'erase_value' may also be a
  [num_classes, C] table for a per-channel value. Values are not clamped (the images are
  normalised).
  """
  _, height, width, _ = images.shape
  v = _per_image(knobs, configs.knobs_of('erase'), labels)
  keys = jax.random.split(key, images.shape[0])

  def one(k, img, v):
    k_apply, k_box = jax.random.split(k)
    top, left, h, w = sample_erase_box(
        k_box, height, width, (v['erase_scale_min'], v['erase_scale_max']),
        (v['erase_ratio_min'], v['erase_ratio_max']))
    apply = jax.random.uniform(k_apply) < v['erase_prob']
    return erase(img, top, left, jnp.where(apply, h, 0), w, v['erase_value'])

  return jax.vmap(one)(keys, images, v)
