"""Mixup, CutMix and label smoothing: the kernels of the 'mix' and 'smooth' ops, in pure JAX.

Mixup and CutMix follow timm's `Mixup` in batch mode (timm/data/mixup.py): per batch,
with probability `mix_prob`, lambda ~ Beta(alpha, alpha) and the batch is mixed with its
reverse (image b with image B-1-b): Mixup blends the two, CutMix pastes a box of the
reversed batch whose side is sqrt(1 - lambda) of the image's, centred uniformly and
clipped to the image, and then takes lambda as the share of the image left uncovered.
The soft targets are mixed with the same lambda. With both alphas > 0, a batch uses CutMix
with probability `mix_switch_prob`, else Mixup; an alpha of 0 turns that kind off.
timm's `cutmix_minmax` and per-element modes are not offered.

Every knob may be a traced per-model scalar, so a sweep of alphas is one program; each
model draws its own lambda, box and coins from its own key. The draws (`mix_draws`) are
apart from the arithmetic (`mix_given`), which tests/test_mix.py checks against timm's
for given draws.

Label smoothing is optax's `smooth_labels`: (1 - a) * target + a / num_classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth(key, target, label_smoothing):
  """[K] -> [K]: one image's soft target smoothed as optax.smooth_labels(target, a).

  label_smoothing a: a scalar (traced allowed), the value of the image's class when it is
  given per class. key: unused (every per-image kernel takes one).
  """
  del key
  return (1.0 - label_smoothing) * target + label_smoothing / target.shape[-1]


def mix_choice(u_apply, u_switch, lam_mixup, lam_cutmix, mixup_alpha, cutmix_alpha,
               mix_prob, mix_switch_prob):
  """timm's Mixup._params_per_batch from its draws: (lambda, use CutMix?) scalars.

  u_apply, u_switch: uniforms in [0, 1) for `rand() < mix_prob` and `rand() < switch_prob`;
  lam_mixup, lam_cutmix: Beta(alpha, alpha) draws of each kind. No mixing gives lambda 1.
  """
  mixup_on, cutmix_on = mixup_alpha > 0, cutmix_alpha > 0
  use_cutmix = jnp.where(mixup_on & cutmix_on, u_switch < mix_switch_prob, cutmix_on)
  mixing = (u_apply < mix_prob) & (mixup_on | cutmix_on)
  lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup)
  return jnp.where(mixing, lam, 1.0), mixing & use_cutmix


def mix_draws(key, height: int, width: int, mixup_alpha, cutmix_alpha, mix_prob,
              mix_switch_prob):
  """One batch's random draws: (lambda, use CutMix?, box centre row, box centre column).

  The coins, both Beta draws and the centre (uniform on the H x W pixels, as timm's
  randint) come from their own keys, so models that share a key but not an alpha see the
  same coins and centre.
  """
  k_apply, k_switch, k_mixup, k_cutmix, k_row, k_col = jax.random.split(key, 6)
  safe = lambda alpha: jnp.where(alpha > 0, alpha, 1.0)  # Beta(0, 0) is not a distribution
  lam_mixup = jax.random.beta(k_mixup, safe(mixup_alpha), safe(mixup_alpha))
  lam_cutmix = jax.random.beta(k_cutmix, safe(cutmix_alpha), safe(cutmix_alpha))
  lam, use_cutmix = mix_choice(jax.random.uniform(k_apply), jax.random.uniform(k_switch),
                               lam_mixup, lam_cutmix, mixup_alpha, cutmix_alpha, mix_prob,
                               mix_switch_prob)
  row = jax.random.randint(k_row, (), 0, height)
  col = jax.random.randint(k_col, (), 0, width)
  return lam, use_cutmix, row, col


def cutmix_box(lam, row, col, height: int, width: int):
  """timm's rand_bbox and cutmix_bbox_and_lam (correct_lam): the box (top, bottom, left,
  right), int32, rows top..bottom-1, and lambda corrected to the uncovered share."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  top, bottom = (jnp.clip(row + d, 0, height) for d in (-(cut_h // 2), cut_h // 2))
  left, right = (jnp.clip(col + d, 0, width) for d in (-(cut_w // 2), cut_w // 2))
  area = (bottom - top) * (right - left)
  return (top, bottom, left, right), 1.0 - area / (height * width)


def mix_given(images, targets, lam, use_cutmix, row, col):
  """images [B, H, W, C] and soft targets [B, K] mixed with their reverse for given draws.

  Returns the mixed images and targets, targets * lam + reversed targets * (1 - lam), with
  lambda corrected to the box's area under CutMix.
  """
  _, height, width, _ = images.shape
  partner = images[::-1]
  (top, bottom, left, right), lam_box = cutmix_box(lam, row, col, height, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  pasted = jnp.where(inside[None, :, :, None], partner, images)
  blended = images * lam + partner * (1.0 - lam)
  lam = jnp.where(use_cutmix, lam_box, lam).astype(targets.dtype)
  mixed_targets = targets * lam + targets[::-1] * (1.0 - lam)
  return jnp.where(use_cutmix, pasted, blended), mixed_targets


def mix(key, images, targets, mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob):
  """The 'mix' op: one model's batch (images [B, H, W, C], soft targets [B, K]) mixed as
  timm's Mixup in batch mode; every knob a scalar (traced allowed)."""
  _, height, width, _ = images.shape
  draws = mix_draws(key, height, width, mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob)
  return mix_given(images, targets, *draws)
