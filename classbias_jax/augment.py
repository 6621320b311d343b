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

from classbias_jax import configs

# The ops of `augment_batch`, in the order they are applied.
OPS = ('pad_crop', 'crop', 'flip', 'color')

# torchvision's get_params loops: at most this many tries before the fallback box.
_TRIES = 10

# Op ids into ColorJitter's permutation, as torchvision's fn_idx.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


# ----------------------------------------------------------------------------- colour


def _blend(a, b, factor):
  """torchvision's _blend for float images: clamp(f*a + (1-f)*b, 0, 1)."""
  return jnp.clip(factor * a + (1.0 - factor) * b, 0.0, 1.0)


def rgb_to_grayscale(img):
  """[H, W, 3] -> [H, W, 1]: 0.2989 R + 0.587 G + 0.114 B (torchvision's weights)."""
  return (0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2])[..., None]


def _check_channels(img):
  if img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f'expected one image [H, W, C] with C = 1 or 3, got {img.shape}')


def adjust_brightness(img, factor):
  """[H, W, C] -> [H, W, C]: blend(img, 0, factor)."""
  return _blend(img, 0.0, factor)


def _contrast_target(img):
  """Scalar: mean of the greyscale image (of the image itself when C = 1)."""
  return jnp.mean(rgb_to_grayscale(img) if img.shape[-1] == 3 else img)


def _saturation_target(img):
  """[H, W, 1] greyscale; for C = 1 the image itself, so saturation is a no-op (as PIL)."""
  return rgb_to_grayscale(img) if img.shape[-1] == 3 else img


def adjust_contrast(img, factor):
  """[H, W, C] -> [H, W, C]: blend(img, mean of greyscale(img), factor)."""
  _check_channels(img)
  return _blend(img, _contrast_target(img), factor)


def adjust_saturation(img, factor):
  """[H, W, C] -> [H, W, C]: blend(img, greyscale(img), factor); unchanged when C = 1."""
  _check_channels(img)
  if img.shape[-1] == 1:
    return img
  return _blend(img, _saturation_target(img), factor)


def _rgb_to_hsv(img):
  """[..., 3] RGB -> [..., 3] HSV, as torchvision's _rgb_to_hsv (h in [0, 1))."""
  r, g, b = img[..., 0], img[..., 1], img[..., 2]
  maxc = jnp.max(img, axis=-1)
  minc = jnp.min(img, axis=-1)
  eqc = maxc == minc
  crange = maxc - minc
  # Grey pixels (max == min) get s = 0 and h = 0; the divisors only avoid 0/0.
  s = crange / jnp.where(eqc, 1.0, maxc)
  divisor = jnp.where(eqc, 1.0, crange)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.mod(h / 6.0 + 1.0, 1.0)
  return jnp.stack([h, s, maxc], axis=-1)


def _hsv_to_rgb(hsv):
  """[..., 3] HSV -> [..., 3] RGB, as torchvision's _hsv_to_rgb."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = h * 6.0
  i = jnp.floor(h6)
  f = h6 - i
  i = jnp.mod(i.astype(jnp.int32), 6)
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  # The sector i picks which of (v, p, q, t) each channel takes.
  r = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [v, q, p, p, t], v)
  g = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [t, v, v, q, p], p)
  b = jnp.select([i == 0, i == 1, i == 2, i == 3, i == 4], [p, p, t, v, v], q)
  return jnp.stack([r, g, b], axis=-1)


def adjust_hue(img, hue_factor):
  """[H, W, C] -> [H, W, C]: RGB -> HSV, h = (h + hue_factor) mod 1, back; C = 1 unchanged.

  torchvision requires hue_factor in [-0.5, 0.5]; any value works here (it is periodic).
  """
  _check_channels(img)
  if img.shape[-1] == 1:
    return img
  hsv = _rgb_to_hsv(img)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + hue_factor, 1.0))
  return _hsv_to_rgb(hsv)


def color_jitter_params(key, brightness, contrast, saturation, hue):
  """Draws ColorJitter(brightness, contrast, saturation, hue)'s parameters.

  Factors are uniform in [max(0, 1-b), 1+b] for b, c, s and in [-h, h] for the hue, each
  from its own uniform u so that models differing only in strength stay coupled.

  Returns:
    order: int32 [4], a random permutation of the op ids (0 brightness, 1 contrast,
      2 saturation, 3 hue), applied first to last.
    factors: float32 [4], indexed by op id.
  """
  # One draw for everything: each random-bits call costs compile time under jit.
  u = jax.random.uniform(key, (8,))
  # The ranks of 4 iid uniforms are a uniformly random permutation.
  order = jnp.argsort(u[4:]).astype(jnp.int32)
  bcs = jnp.stack([jnp.asarray(x, jnp.float32) for x in (brightness, contrast, saturation)])
  lo = jnp.maximum(0.0, 1.0 - bcs)
  hi = 1.0 + bcs
  hue_factor = jnp.asarray(hue, jnp.float32) * (2.0 * u[3] - 1.0)
  return order, jnp.concatenate([lo + (hi - lo) * u[:3], hue_factor[None]])


def _blend_op(img, op, factor):
  """Brightness (op 0), contrast (1) or saturation (2), picked by a traced op id.

  All three are blends that differ only in what they blend towards, so one blend with
  a selected target serves them without computing all three.
  """
  target = jnp.where(op == _BRIGHTNESS, 0.0,
                     jnp.where(op == _CONTRAST, _contrast_target(img), _saturation_target(img)))
  return _blend(img, target, factor)


def apply_color_jitter(img, order, factors):
  """[H, W, C] -> [H, W, C]: the four colour ops in `order` with `factors` (by op id).

  The hue (the costly op) sits at one position p of the permutation; the three blends
  run in their drawn order, those before p ahead of a single hue call and the rest after
  it. This evaluates the hue once instead of once per position under vmap.
  """
  _check_channels(img)
  hue_pos = jnp.argmax(order == _HUE)
  # Stable sort on "is hue" moves the hue to the end, keeping the blends' order.
  blend_ops = order[jnp.argsort(order == _HUE, stable=True)][:3]
  out = img
  for j in range(3):
    op = blend_ops[j]
    out = jnp.where(j < hue_pos, _blend_op(out, op, factors[op]), out)
  # A zero hue factor is skipped, as torchvision skips an unset hue, so strength 0 is
  # exactly the identity (the HSV round trip is not, in floating point).
  if img.shape[-1] == 3:
    out = jnp.where(factors[_HUE] != 0, adjust_hue(out, factors[_HUE]), out)
  for j in range(3):
    op = blend_ops[j]
    out = jnp.where(j >= hue_pos, _blend_op(out, op, factors[op]), out)
  return out


def color_jitter(key, img, brightness, contrast, saturation, hue):
  """[H, W, C] -> [H, W, C]: torchvision ColorJitter with (possibly traced) strengths."""
  order, factors = color_jitter_params(key, brightness, contrast, saturation, hue)
  return apply_color_jitter(img, order, factors)


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
      img = color_jitter(jax.random.fold_in(k, 3), img, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
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
