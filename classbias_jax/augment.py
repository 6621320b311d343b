"""Image augmentations with torchvision.transforms.v2 semantics, in pure JAX.

Every op acts on ONE float32 image [H, W, C] (C = 1 or 3, values in [0, 1]), jits and
vmaps, and takes an explicit key when it is random. Strengths, probabilities and boxes
may be traced arrays, so one compiled program serves a whole sweep of models.

Common random numbers: every random parameter is drawn as a uniform that does not depend
on the strength and is then mapped (factor = lo + (hi - lo) * u), so two models that share
a key but differ in a strength see coupled draws; only the knob differs between them.

Each op of knob_table.KNOBS has its kernel in `KERNELS`, whose parameters after the key and
the input are the short names of the op's knobs: `preprocess` runs the compiled ops stage
by stage (knob_table.STAGES) and hands each kernel its knobs through the table, either a
scalar (one value for the model) or, per image, a per-class table [num_classes] looked up
by the image's label; under `jax.vmap` over models these carry a leading model axis.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from classbias_jax import color, knob_table, mix

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


# ------------------------------------------------------------------------------- kernels
# One per op of knob_table.KNOBS: (key, one image, **the op's knobs) -> the image.


def pad_crop_kernel(key, img, pad_crop: int):
  return _random_pad_crop(key, img, pad_crop)


def crop_kernel(key, img, crop_scale_min, crop_scale_max, crop_ratio_min, crop_ratio_max):
  """RandomResizedCrop(scale, ratio) back to the image's own size."""
  height, width, _ = img.shape
  box = sample_resized_crop_box(key, height, width, (crop_scale_min, crop_scale_max),
                                (crop_ratio_min, crop_ratio_max))
  return resized_crop(img, *box, (height, width))


def flip_kernel(key, img, flip_prob):
  return hflip(key, img, flip_prob)


def color_kernel(key, img, color_strength):
  """ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) at strength s."""
  s = color_strength
  return color.color_jitter(key, img, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)


def erase_kernel(key, img, erase_prob, erase_scale_min, erase_scale_max, erase_ratio_min,
                 erase_ratio_max, erase_value):
  """RandomErasing on a normalised image (values not clamped); erase_value a scalar or [C]."""
  height, width, _ = img.shape
  k_apply, k_box = jax.random.split(key)
  top, left, h, w = sample_erase_box(k_box, height, width, (erase_scale_min, erase_scale_max),
                                     (erase_ratio_min, erase_ratio_max))
  apply = jax.random.uniform(k_apply) < erase_prob
  return erase(img, top, left, jnp.where(apply, h, 0), w, erase_value)


# op -> kernel. Per-image stages (pixels, normalised, targets) take one image (or its soft
# target [K]); the batch stage takes (key, images [B, H, W, C], targets [B, K], **knobs)
# and returns both.
KERNELS = {'pad_crop': pad_crop_kernel, 'crop': crop_kernel, 'flip': flip_kernel,
           'color': color_kernel, 'erase': erase_kernel, 'smooth': mix.smooth, 'mix': mix.mix}

# ------------------------------------------------------------------------------- batches


def _per_image(knobs: Mapping[str, jnp.ndarray], names: Sequence[str], labels):
  """{name: [B, ...]}: each knob broadcast (scalar) or looked up by label (table[labels]).

  A knob not given takes its knob_table.KNOBS default.
  """
  out, defaults = {}, knob_table.defaults()
  for name in names:
    value = jnp.asarray(knobs[name] if name in knobs else defaults[name], jnp.float32)
    out[name] = (jnp.broadcast_to(value, labels.shape) if value.ndim == 0
                 else jnp.take(value, labels, axis=0))
  return out


def run_stage(stage: str, key, x, labels, knobs: Mapping[str, jnp.ndarray],
              ops: Sequence[str], static: Mapping[str, float] | None = None):
  """x [B, ...] -> [B, ...]: the ops of a per-image stage that are in `ops`, in table order,
  each image with its own knob values.

  Image b uses split(key, B)[b], and the stage's j-th op (of all its ops in table order)
  fold_in(that key, j), so turning one op on or off leaves the others' draws alone.
  static: short name -> compiled-in value of the untraced knobs (knob_table.static_values).
  """
  every = knob_table.ops_of(stage)
  unknown = set(ops) - set(every)
  if unknown:
    raise ValueError(f'unknown {stage} ops {sorted(unknown)}; known: {every}')
  static = static or {}
  names = [n for op in every if op in ops for n in knob_table.knobs_of(op) if n not in static]
  values = _per_image(knobs, names, labels)
  keys = jax.random.split(key, x.shape[0])

  def one(k, item, v):
    for j, op in enumerate(every):
      if op in ops:
        kwargs = {n: static[n] if n in static else v[n] for n in knob_table.knobs_of(op)}
        item = KERNELS[op](jax.random.fold_in(k, j), item, **kwargs)
    return item

  return jax.vmap(one)(keys, x, values) if ops else x


def run_batch_stage(key, images, targets, knobs: Mapping[str, jnp.ndarray],
                    ops: Sequence[str], static: Mapping[str, float] | None = None):
  """(images [B, H, W, C], targets [B, K]) through the batch stage's ops in `ops`, in
  table order; the j-th op (of all) draws from fold_in(key, j). Knobs are the model's
  scalars (a missing one takes its default)."""
  given = {**knob_table.defaults(), **knobs, **(static or {})}
  for j, op in enumerate(knob_table.ops_of('batch')):
    if op in ops:
      kwargs = {n: given[n] for n in knob_table.knobs_of(op)}
      images, targets = KERNELS[op](jax.random.fold_in(key, j), images, targets, **kwargs)
  return images, targets


def preprocess(key, images, labels, knobs: Mapping[str, jnp.ndarray], ops: Sequence[str], *,
               num_classes: int, mean, std, static: Mapping[str, float] | None = None):
  """One model's batch through every stage: uint8-scaled images float32 [B, H, W, C] in
  [0, 1] and int labels [B] -> (normalised images [B, H, W, C], soft targets
  [B, num_classes]).

  ops: the compiled ops (any stage's); the stages run in knob_table.STAGES's order, with
  normalisation ((x - mean) / std, mean and std [C]) between 'pixels' and 'normalised'.
  Stage i draws from split(key, 4)[i].
  """
  targets = jax.nn.one_hot(labels, num_classes)
  if not ops:
    return (images - mean) / std, targets
  keys = jax.random.split(key, 4)
  in_stage = lambda stage: tuple(op for op in ops if op in knob_table.ops_of(stage))
  x = run_stage('pixels', keys[0], images, labels, knobs, in_stage('pixels'), static)
  x = run_stage('normalised', keys[1], (x - mean) / std, labels, knobs, in_stage('normalised'),
                static)
  targets = run_stage('targets', keys[2], targets, labels, knobs, in_stage('targets'), static)
  return run_batch_stage(keys[3], x, targets, knobs, in_stage('batch'), static)


def augment_batch(key, images, labels, knobs: Mapping[str, jnp.ndarray],
                  ops: Sequence[str], *, pad_crop: int = 4):
  """[B, H, W, C] -> [B, H, W, C]: the 'pixels' stage, fresh parameters per image.

  images: float32 [B, H, W, C] in [0, 1]; labels: int [B], to look up per-class tables;
  knobs: short name -> scalar or [num_classes] table (a missing one takes its default);
  ops: static subset of the stage's ops (pad_crop, crop, flip, color), applied in table
  order; pad_crop: static padding of the 'pad_crop' op.
  """
  return run_stage('pixels', key, images, labels, knobs, ops, {'pad_crop': pad_crop})


def erase_batch(key, images, labels, knobs: Mapping[str, jnp.ndarray]):
  """[B, H, W, C] -> [B, H, W, C]: RandomErasing on normalised images, per image; knobs as
  augment_batch's ('erase_value' may also be a [num_classes, C] table)."""
  return run_stage('normalised', key, images, labels, knobs, ('erase',))
