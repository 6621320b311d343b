"""ColorJitter with torchvision.transforms.v2 semantics, in pure JAX, on ONE float32 image
[H, W, C] (C = 1 or 3, values in [0, 1]); strengths may be traced. augment.py applies it.

Common random numbers: the factors are drawn as uniforms that do not depend on the
strength and then mapped (factor = lo + (hi - lo) * u), so models that share a key but
differ in strength see coupled draws.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Op ids into ColorJitter's permutation, as torchvision's fn_idx.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


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
