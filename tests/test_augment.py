"""augment.py against independent numpy / colorsys / PIL references of torchvision's
definitions, plus statistical checks of the box samplers."""
import colorsys
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from classbias_jax import augment as A
from classbias_jax import color as C
from classbias_jax import knob_table

TOL = 1e-5  # float32 against float64 references; far inside 1/255


def _rng(seed=0):
  return np.random.default_rng(seed)


def _keys(n, seed=0):
  return jax.random.split(jax.random.PRNGKey(seed), n)


# Jitted once here: compiling dominates this file's run time on CPU.
_COLOR_JITTER = jax.jit(C.color_jitter)
_RESIZED_CROP = jax.jit(A.resized_crop, static_argnums=5)


# ------------------------------------------------------------------ numpy references


def ref_grey(img):
  return 0.2989 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def ref_blend(a, b, f):
  return np.clip(f * a + (1 - f) * b, 0, 1)


def ref_brightness(img, f):
  return ref_blend(img, 0.0, f)


def ref_contrast(img, f):
  mean = ref_grey(img).mean() if img.shape[-1] == 3 else img.mean()
  return ref_blend(img, mean, f)


def ref_saturation(img, f):
  if img.shape[-1] == 1:
    return img
  return ref_blend(img, ref_grey(img)[..., None], f)


def ref_hue(img, f):
  if img.shape[-1] == 1:
    return img
  out = np.empty_like(img, dtype=np.float64)
  for idx in np.ndindex(img.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*img[idx])
    out[idx] = colorsys.hsv_to_rgb((h + f) % 1.0, s, v)
  return out


REF_OPS = (ref_brightness, ref_contrast, ref_saturation, ref_hue)


def ref_resized_crop(img, top, left, height, width, size):
  """Crop, then PIL's BILINEAR resize of each channel as a float ('F') image; PIL
  widens the kernel when downscaling, as torch's antialias=True does."""
  crop = img[top:top + height, left:left + width]
  return np.stack([
      np.asarray(Image.fromarray(crop[..., c].astype(np.float32)).resize(
          (size[1], size[0]), Image.Resampling.BILINEAR))
      for c in range(img.shape[-1])], axis=-1)


def ref_rrc_params(rng, height, width, scale, ratio):
  """RandomResizedCrop.get_params, line by line in Python."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


# ------------------------------------------------------------------------ colour ops


def _test_image(c=3, shape=(6, 7)):
  img = _rng(1).uniform(size=shape + (c,))
  if c == 3:
    # Grey pixels, pure primaries and ties between channels: the HSV branch edges.
    img[0, :6] = [[0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.7, 0.7, 0.2],
                  [0.2, 0.6, 0.6]]
    img[1, 0] = [0, 0, 0]
    img[1, 1] = [1, 1, 1]
  return img


@pytest.mark.parametrize('c', [1, 3])
@pytest.mark.parametrize('factor', [0.0, 0.35, 1.0, 1.8])
def test_blend_ops_match_reference(c, factor):
  img = _test_image(c)
  x = jnp.asarray(img, jnp.float32)
  for fn, ref in ((C.adjust_brightness, ref_brightness), (C.adjust_contrast, ref_contrast),
                  (C.adjust_saturation, ref_saturation)):
    np.testing.assert_allclose(fn(x, factor), ref(img, factor), atol=TOL, err_msg=fn.__name__)


def test_contrast_zero_is_mean_grey_and_saturation_zero_is_grey():
  img = _test_image(3)
  x = jnp.asarray(img, jnp.float32)
  np.testing.assert_allclose(C.adjust_contrast(x, 0.0), np.full(img.shape, ref_grey(img).mean()),
                             atol=TOL)
  out = np.asarray(C.adjust_saturation(x, 0.0))
  np.testing.assert_allclose(out, np.repeat(ref_grey(img)[..., None], 3, -1), atol=TOL)


@pytest.mark.parametrize('factor', [-0.5, -0.21, 0.0, 0.13, 0.37, 0.5])
def test_hue_matches_colorsys(factor):
  img = _test_image(3)
  out = C.adjust_hue(jnp.asarray(img, jnp.float32), factor)
  np.testing.assert_allclose(out, ref_hue(img, factor), atol=TOL)
  # A hue shift keeps each pixel's value (its max channel) and moves its colour.
  np.testing.assert_allclose(np.asarray(out).max(-1), img.max(-1), atol=TOL)
  if factor:
    assert np.abs(np.asarray(out) - img).max() > 0.1


def test_hue_one_channel_unchanged():
  img = jnp.asarray(_test_image(1), jnp.float32)
  np.testing.assert_array_equal(C.adjust_hue(img, 0.3), img)


def test_colour_ops_traced_factor_jit_vmap():
  img = jnp.asarray(_test_image(3), jnp.float32)
  factors = jnp.array([0.2, 0.9, 1.5])
  for fn, ref in ((C.adjust_brightness, ref_brightness), (C.adjust_contrast, ref_contrast),
                  (C.adjust_saturation, ref_saturation), (C.adjust_hue, ref_hue)):
    f = factors - 1.0 if fn is C.adjust_hue else factors
    out = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(img, f)
    for i in range(3):
      np.testing.assert_allclose(out[i], ref(np.asarray(img, np.float64), float(f[i])),
                                 atol=TOL)


# ----------------------------------------------------------------------- colour jitter


def test_color_jitter_strength_zero_is_identity():
  for c in (1, 3):
    img = jnp.asarray(_test_image(c), jnp.float32)
    out = jax.jit(jax.vmap(C.color_jitter, in_axes=(0, None, None, None, None, None)))(
        _keys(64), img, 0.0, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(out, jnp.broadcast_to(img, out.shape))


def test_color_jitter_params_ranges_order_and_coupling():
  keys = _keys(2000)
  draw = jax.jit(jax.vmap(C.color_jitter_params, in_axes=(0, None, None, None, None)))
  order, f = draw(keys, 0.4, 1.6, 0.8, 0.3)
  order, f = np.asarray(order), np.asarray(f)
  for col, lo, hi in ((0, 0.6, 1.4), (1, 0.0, 2.6), (2, 0.2, 1.8), (3, -0.3, 0.3)):
    assert lo <= f[:, col].min() < lo + 0.02 and hi - 0.02 < f[:, col].max() <= hi
    # Uniform: the mean sits mid-range (4 standard errors).
    assert abs(f[:, col].mean() - (lo + hi) / 2) < 4 * (hi - lo) / math.sqrt(12 * 2000)
  # Every permutation of the 4 ops shows up, each op first about a quarter of the time.
  assert len({tuple(o) for o in order}) == 24
  np.testing.assert_allclose(np.bincount(order[:, 0], minlength=4) / 2000, 0.25, atol=0.04)
  # Common random numbers: same keys, other strengths -> the same order and coupled u.
  order2, f2 = draw(keys, 0.2, 0.5, 0.8, 0.1)
  np.testing.assert_array_equal(order, order2)
  np.testing.assert_allclose((f2[:, 0] - 1) / 0.2, (f[:, 0] - 1) / 0.4, atol=1e-4)
  np.testing.assert_allclose(f2[:, 3] / 0.1, f[:, 3] / 0.3, atol=1e-4)


def test_color_jitter_matches_reference_in_every_order():
  img = _test_image(3)
  x = jnp.asarray(img, jnp.float32)
  f = np.array([1.3, 0.6, 1.7, 0.17])
  apply = jax.jit(C.apply_color_jitter)
  for order in itertools.permutations(range(4)):
    ref = img
    for op in order:
      ref = REF_OPS[op](ref, f[op])
    np.testing.assert_allclose(apply(x, jnp.array(order), jnp.asarray(f, jnp.float32)), ref,
                               atol=TOL, err_msg=str(order))


def test_color_jitter_applies_its_drawn_parameters():
  img = _test_image(3)
  x = jnp.asarray(img, jnp.float32)
  for key in _keys(4, seed=3):
    order, f = jax.jit(C.color_jitter_params)(key, 0.8, 0.8, 0.8, 0.2)
    ref = img
    for op in np.asarray(order):
      ref = REF_OPS[op](ref, float(f[op]))
    np.testing.assert_allclose(_COLOR_JITTER(key, x, 0.8, 0.8, 0.8, 0.2), ref, atol=TOL)


def test_color_jitter_order_matters():
  # Saturation then brightness differs from brightness then saturation when clamping.
  img = jnp.asarray(_test_image(3), jnp.float32)
  f = jnp.array([1.9, 1.0, 0.0, 0.0])
  a = C.apply_color_jitter(img, jnp.array([0, 2, 1, 3]), f)
  b = C.apply_color_jitter(img, jnp.array([2, 0, 1, 3]), f)
  np.testing.assert_allclose(a, ref_saturation(ref_brightness(_test_image(3), 1.9), 0.0),
                             atol=TOL)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0.05


def test_color_jitter_per_image_traced_strengths_under_vmap():
  imgs = jnp.asarray(_rng(2).uniform(size=(4, 5, 5, 3)), jnp.float32)
  strengths = jnp.array([0.0, 0.3, 0.9, 1.5])
  keys = _keys(4, seed=7)
  fn = lambda k, im, s: _COLOR_JITTER(k, im, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
  out = jax.jit(jax.vmap(fn))(keys, imgs, strengths)
  for i in range(4):
    np.testing.assert_allclose(out[i], fn(keys[i], imgs[i], float(strengths[i])), atol=1e-6)
  np.testing.assert_array_equal(out[0], imgs[0])
  assert np.abs(np.asarray(out[3] - imgs[3])).max() > 0.05


# ------------------------------------------------------------------------ resized crop


@pytest.mark.parametrize('box,size', [
    ((3, 5, 10, 12), (16, 20)),  # upscale
    ((2, 1, 18, 22), (7, 9)),  # downscale (antialiased)
    ((0, 4, 20, 6), (5, 13)),  # down in one axis, up in the other
    ((0, 0, 20, 24), (20, 24)),  # whole image, same size: identity
])
def test_resized_crop_integer_box_matches_pil(box, size):
  img = _rng(4).uniform(size=(20, 24, 3))
  out = _RESIZED_CROP(jnp.asarray(img, jnp.float32), *box, size)
  assert out.shape == size + (3,)
  np.testing.assert_allclose(out, ref_resized_crop(img, *box, size), atol=1e-5)


def _smooth_image(h=24, w=28):
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
  return np.stack([0.5 + 0.4 * np.sin(2 * y + 3 * x), 0.5 + 0.3 * np.cos(4 * x - y),
                   y * x], -1)


@pytest.mark.parametrize('box,size', [
    ((2.3, 3.6, 9.5, 12.25), (20, 18)),  # upscale
    ((1.7, 0.4, 20.6, 25.3), (9, 11)),  # downscale
])
def test_resized_crop_fractional_box_matches_pil_box(box, size):
  # PIL resizes a float box of the whole image; on a smooth image that must agree with
  # cropping the same span.
  img = _smooth_image()
  top, left, height, width = box
  ref = np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32)).resize(
      (size[1], size[0]), Image.Resampling.BILINEAR,
      box=(left, top, left + width, top + height))) for c in range(3)], -1)
  out = _RESIZED_CROP(jnp.asarray(img, jnp.float32), *box, size)
  assert np.abs(np.asarray(out) - ref).mean() < 2 / 255


def test_resized_crop_is_continuous_in_the_box():
  img = jnp.asarray(_rng(5).uniform(size=(20, 24, 3)), jnp.float32)
  fn = _RESIZED_CROP
  exact = fn(img, 3, 5, 10, 12, (16, 20))
  near = fn(img, 3.0002, 4.9998, 10.0003, 11.9997, (16, 20))
  assert np.abs(np.asarray(near - exact)).max() < 1e-3
  shifted = fn(img, 3.5, 5, 10, 12, (16, 20))
  assert np.abs(np.asarray(shifted - exact)).max() > 0.01


def test_resized_crop_traced_boxes_under_vmap():
  img = _rng(6).uniform(size=(16, 16, 1))
  boxes = np.array([[0, 0, 16, 16], [2, 3, 8, 5], [5, 1, 11, 14]])
  out = jax.jit(jax.vmap(lambda b: A.resized_crop(jnp.asarray(img, jnp.float32),
                                                  *b, (8, 8))))(jnp.asarray(boxes))
  for i, b in enumerate(boxes):
    np.testing.assert_allclose(out[i], ref_resized_crop(img, *b, (8, 8)), atol=1e-5)


# ------------------------------------------------------------------------------- erase


def test_erase_hand_checked():
  img = jnp.arange(20, dtype=jnp.float32).reshape(4, 5, 1)
  out = np.asarray(A.erase(img, 1, 2, 2, 3, -1.0))[..., 0]
  expected = np.array([[0, 1, 2, 3, 4],
                       [5, 6, -1, -1, -1],
                       [10, 11, -1, -1, -1],
                       [15, 16, 17, 18, 19]], np.float32)
  np.testing.assert_array_equal(out, expected)
  rgb = jnp.zeros((3, 3, 3))
  out = np.asarray(A.erase(rgb, 2, 0, 1, 1, jnp.array([0.1, 0.2, 0.3])))
  np.testing.assert_allclose(out[2, 0], [0.1, 0.2, 0.3])
  assert np.count_nonzero(out) == 3
  np.testing.assert_array_equal(A.erase(img, 1, 1, 0, 0, 9.0), img)
  # Traced boxes under jit + vmap.
  boxes = jnp.array([[1, 2, 2, 3], [0, 0, 4, 5]])
  out = jax.jit(jax.vmap(lambda b: A.erase(img, *b, -1.0)))(boxes)
  np.testing.assert_array_equal(out[0, ..., 0], expected)
  assert (np.asarray(out[1]) == -1).all()


# ---------------------------------------------------------------------------- samplers


# One compile per image size: scale and ratio are traced, as they are in a sweep.
_SAMPLE_RRC = jax.jit(jax.vmap(A.sample_resized_crop_box, in_axes=(0, None, None, None, None)),
                      static_argnums=(1, 2))
_SAMPLE_ERASE = jax.jit(jax.vmap(A.sample_erase_box, in_axes=(0, None, None, None, None)),
                        static_argnums=(1, 2))
N_BOXES = 2000


def _boxes(sampler, height, width, scale, ratio, seed=0):
  """Four int arrays [N_BOXES]: top, left, h, w."""
  pair = lambda p: (jnp.float32(p[0]), jnp.float32(p[1]))
  return [np.asarray(x) for x in sampler(_keys(N_BOXES, seed), height, width, pair(scale),
                                         pair(ratio))]


def _rrc_boxes(n, height, width, scale, ratio, seed=0):
  return [x[:n] for x in _boxes(_SAMPLE_RRC, height, width, scale, ratio, seed)]


def test_resized_crop_box_inside_and_in_range():
  top, left, h, w = _rrc_boxes(2000, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3))
  assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
  assert (top + h <= 224).all() and (left + w <= 224).all()
  frac = h * w / 224**2
  assert frac.min() > 0.08 * 0.97 and frac.max() <= 1.0
  aspect = w / h
  assert aspect.min() > 0.75 * 0.98 and aspect.max() < 4 / 3 * 1.02
  # Placement is uniform over the free range: mean relative position near 1/2.
  rel = top[h < 200] / (224 - h[h < 200])
  assert abs(rel.mean() - 0.5) < 0.03


def test_box_aspect_conventions():
  # Asymmetric ratio ranges tell the conventions apart: RandomResizedCrop's ratio is
  # w/h, RandomErasing's is h/w.
  _, _, h, w = _boxes(_SAMPLE_RRC, 224, 224, (0.1, 0.3), (1.5, 2.5))
  assert (w / h > 1.5 * 0.97).all() and (w / h < 2.5 * 1.03).all()
  _, _, h, w = _boxes(_SAMPLE_ERASE, 224, 224, (0.1, 0.3), (1.5, 2.5))
  assert (h / w > 1.5 * 0.97).all() and (h / w < 2.5 * 1.03).all()


def test_resized_crop_box_area_is_uniform_when_always_accepted():
  _, _, h, w = _rrc_boxes(2000, 224, 224, (0.1, 0.5), (1.0, 1.0))
  frac = h * w / 224**2
  counts = np.histogram(frac, bins=4, range=(0.1, 0.5))[0] / len(frac)
  np.testing.assert_allclose(counts, 0.25, atol=0.035)


def test_resized_crop_box_distribution_matches_torchvision_loop():
  # A setting where many tries fail, so "first accepted try wins" and the fallback
  # shape the distribution; compare with a line-by-line simulation of get_params.
  height, width, scale, ratio, n = 24, 40, (0.5, 1.2), (0.3, 3.0), 2000
  ours = np.stack(_rrc_boxes(n, height, width, scale, ratio, seed=1), -1).astype(float)
  rng = _rng(11)
  ref = np.array([ref_rrc_params(rng, height, width, scale, ratio) for _ in range(n)], float)
  # Fallback (centre crop, the whole image here) is about as frequent in both.
  fb_ours = np.mean((ours == [0, 0, 24, 40]).all(1))
  fb_ref = np.mean((ref == [0, 0, 24, 40]).all(1))
  assert fb_ref > 0.02 and abs(fb_ours - fb_ref) < 0.03
  for col in range(4):
    se = math.sqrt(ours[:, col].var() / n + ref[:, col].var() / n)
    assert abs(ours[:, col].mean() - ref[:, col].mean()) < 4 * se + 1e-9, col


@pytest.mark.parametrize('height,width,ratio,expected', [
    (32, 32, (3 / 4, 4 / 3), (0, 0, 32, 32)),  # ratio allows the image: whole image
    (32, 32, (2.0, 3.0), (8, 0, 16, 32)),  # image too tall for the ratios
    (32, 32, (0.25, 0.5), (0, 8, 32, 16)),  # image too wide
])
def test_resized_crop_box_fallback(height, width, ratio, expected):
  # Areas above the image can never be accepted.
  boxes = _rrc_boxes(16, height, width, (2.0, 3.0), ratio)
  np.testing.assert_array_equal(np.stack(boxes, -1), np.tile(expected, (16, 1)))


def test_resized_crop_box_full_scale():
  boxes = np.stack(_rrc_boxes(200, 32, 32, (1.0, 1.0), (1.0, 1.0)), -1)
  np.testing.assert_array_equal(boxes, np.tile([0, 0, 32, 32], (200, 1)))
  # With the default ratios, torchvision's rounding sometimes accepts a 31-pixel side.
  top, left, h, w = _rrc_boxes(400, 32, 32, (1.0, 1.0), (3 / 4, 4 / 3))
  assert h.min() >= 31 and w.min() >= 31 and (h * w == 1024).mean() > 0.8


def test_resized_crop_box_traced_scale_per_image_is_coupled():
  keys = _keys(500, seed=4)
  fn = jax.jit(jax.vmap(lambda k, s: A.sample_resized_crop_box(k, 64, 64, (0.1, s),
                                                                (1.0, 1.0))))
  _, _, h_small, _ = fn(keys, jnp.full(500, 0.3))
  _, _, h_big, _ = fn(keys, jnp.full(500, 0.9))
  # Same uniforms, larger upper scale: never a smaller box, usually a larger one.
  assert (np.asarray(h_big) >= np.asarray(h_small)).all()
  assert (np.asarray(h_big) > np.asarray(h_small)).mean() > 0.9
  _, _, h_mix, _ = fn(keys, jnp.where(jnp.arange(500) % 2 == 0, 0.3, 0.9))
  np.testing.assert_array_equal(np.asarray(h_mix)[::2], np.asarray(h_small)[::2])
  np.testing.assert_array_equal(np.asarray(h_mix)[1::2], np.asarray(h_big)[1::2])


def test_erase_box_inside_and_in_range():
  top, left, h, w = _boxes(_SAMPLE_ERASE, 200, 200, (0.02, 0.33), (0.3, 3.3))
  assert (h < 200).all() and (w < 200).all() and (h > 0).all() and (w > 0).all()
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= 200).all() and (left + w <= 200).all()
  frac = h * w / 200**2
  assert frac.min() > 0.02 * 0.95 and frac.max() < 0.33 * 1.05
  # h uses area*aspect: tall boxes (h > w) for aspect > 1, about half of them.
  assert 0.4 < np.mean(h > w) < 0.6
  aspect = h / w
  assert aspect.min() > 0.3 * 0.95 and aspect.max() < 3.3 * 1.05


def test_erase_box_fallback_is_empty():
  # A box of the whole image is never accepted (h < H fails).
  boxes = np.stack(_boxes(_SAMPLE_ERASE, 200, 200, (1.0, 1.0), (1.0, 1.0)), -1)
  np.testing.assert_array_equal(boxes, np.zeros((N_BOXES, 4)))


# ------------------------------------------------------------------- flip and pad-crop


def test_hflip():
  img = jnp.asarray(_rng(7).uniform(size=(4, 5, 3)), jnp.float32)
  keys = _keys(400)
  flip = jax.jit(jax.vmap(A.hflip, in_axes=(0, None, 0)))
  always = flip(keys, img, jnp.ones(400))
  never = flip(keys, img, jnp.zeros(400))
  np.testing.assert_array_equal(always, jnp.broadcast_to(img[:, ::-1], always.shape))
  np.testing.assert_array_equal(never, jnp.broadcast_to(img, never.shape))
  half = flip(keys, img, jnp.full(400, 0.5))
  flipped = np.asarray((half == img[:, ::-1]).all((1, 2, 3)))
  assert 0.4 < flipped.mean() < 0.6
  assert (flipped | np.asarray((half == img).all((1, 2, 3)))).all()


def test_pad_crop_is_a_window_of_the_padded_image():
  img = _rng(8).uniform(0.1, 1.0, size=(6, 7, 3))
  padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
  out = np.asarray(jax.jit(jax.vmap(lambda k: A.pad_crop(k, jnp.asarray(img, jnp.float32),
                                                         2)))(_keys(300)))
  shifts = []
  for o in out:
    match = [(dy, dx) for dy, dx in itertools.product(range(5), repeat=2)
             if np.allclose(o, padded[dy:dy + 6, dx:dx + 7])]
    assert len(match) == 1
    shifts.append(match[0])
  assert len(set(shifts)) == 25  # every offset 0..2*padding in both axes occurs
  x = jnp.asarray(img, jnp.float32)
  np.testing.assert_array_equal(A.pad_crop(_keys(1)[0], x, 0), x)


# ------------------------------------------------------------------------- the batches


def _batch(b=8, hw=12, seed=9):
  images = jnp.asarray(_rng(seed).uniform(size=(b, hw, hw, 3)), jnp.float32)
  labels = jnp.arange(b, dtype=jnp.int32) % 2
  return images, labels


def test_knob_table_parameters_are_torchvision():
  """The knobs that shape an op (not its strength) default to torchvision's values;
  strengths and probabilities default to off."""
  default = {knob_table.short_name(n): k.default for n, k in knob_table.KNOBS.items()
             if k.op in ('crop', 'flip', 'color', 'erase')}
  assert default == {
      'crop_scale_min': 1.0, 'crop_scale_max': 1.0, 'crop_ratio_min': 0.75,
      'crop_ratio_max': 4 / 3, 'flip_prob': 0.0, 'color_strength': 0.0, 'erase_prob': 0.0,
      'erase_scale_min': 0.02, 'erase_scale_max': 0.33, 'erase_ratio_min': 0.3,
      'erase_ratio_max': 3.3, 'erase_value': 0.0}
  off = knob_table.off_values()
  assert all(off[name] == default[name] for name in off if name in default)


def test_augment_batch_no_ops_and_unknown_op():
  images, labels = _batch()
  np.testing.assert_array_equal(A.augment_batch(_keys(1)[0], images, labels, {}, ()), images)
  with pytest.raises(ValueError, match='unknown'):
    A.augment_batch(_keys(1)[0], images, labels, {}, ('rotate',))


def test_augment_batch_per_class_colour_table():
  images, labels = _batch()
  out = jax.jit(A.augment_batch, static_argnums=4)(
      _keys(1)[0], images, labels, {'color_strength': jnp.array([0.0, 1.0])}, ('color',))
  diff = np.abs(np.asarray(out - images)).max((1, 2, 3))
  labels = np.asarray(labels)
  assert (diff[labels == 0] == 0).all()
  assert (diff[labels == 1] > 0.05).all()


def test_augment_batch_identity_settings_and_pad_crop():
  images, labels = _batch()
  knobs = {'crop_scale_min': 1.0, 'crop_scale_max': 1.0, 'crop_ratio_min': 1.0,
           'crop_ratio_max': 1.0, 'flip_prob': 0.0, 'color_strength': 0.0}
  key = _keys(1)[0]
  fn = jax.jit(A.augment_batch, static_argnums=4, static_argnames='pad_crop')
  out = fn(key, images, labels, knobs, ('crop', 'flip', 'color'))
  np.testing.assert_allclose(out, images, atol=1e-6)
  # pad_crop alone shifts images; the keyword sets the padding (0: identity).
  shifted = fn(key, images, labels, knobs, ('pad_crop',), pad_crop=2)
  assert np.abs(np.asarray(shifted - images)).max() > 0.1
  same = fn(key, images, labels, knobs, ('pad_crop',), pad_crop=0)
  np.testing.assert_array_equal(same, images)


def test_augment_batch_vmap_over_models():
  images, labels = _batch()
  m = 3
  knobs = {
      'crop_scale_min': jnp.array([1.0, 0.2, 0.2]),
      'crop_scale_max': jnp.array([1.0, 0.6, 0.6]),
      'crop_ratio_min': jnp.array([1.0, 0.75, 0.75]),
      'crop_ratio_max': jnp.array([1.0, 1.33, 1.33]),
      'flip_prob': jnp.array([0.0, 0.5, 0.5]),
      # Per model, per class: model 2 jitters only class 1.
      'color_strength': jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]),
  }
  keys = jnp.stack([_keys(1, seed=5)[0]] * m)  # one seed: common random numbers
  fn = jax.jit(jax.vmap(
      lambda k, kn: A.augment_batch(k, images, labels, kn, ('pad_crop', 'crop', 'flip', 'color'),
                                    pad_crop=0)))
  out = np.asarray(fn(keys, knobs))
  assert out.shape == (m,) + images.shape
  np.testing.assert_allclose(out[0], images, atol=1e-6)
  assert np.abs(out[1] - np.asarray(images)).max() > 0.1
  # Models 1 and 2 share key and geometry: same crops and flips; colour differs only
  # for class 1.
  lab = np.asarray(labels)
  np.testing.assert_array_equal(out[1][lab == 0], out[2][lab == 0])
  assert (np.abs(out[1][lab == 1] - out[2][lab == 1]).max((1, 2, 3)) > 0.05).all()


def test_erase_batch():
  images, labels = _batch(b=64, hw=20)
  lab = np.asarray(labels)
  key = _keys(1)[0]
  fn = jax.jit(A.erase_batch)
  # Knobs keep one structure (per-class tables), so this compiles once.
  knobs = lambda prob, value: {'erase_prob': jnp.asarray(prob, jnp.float32),
                               'erase_value': jnp.asarray(value, jnp.float32)}
  zeros = np.zeros((2, 3))
  off = fn(key, images, labels, knobs([0.0, 0.0], zeros))
  np.testing.assert_array_equal(off, images)
  out = np.asarray(fn(key, images, labels, knobs([1.0, 1.0], zeros - 3.0)))
  erased = (out == -3.0).all(-1)
  frac = erased.mean((1, 2))
  assert (frac > 0.02 * 0.8).all() and (frac < 0.33 * 1.2).all()
  np.testing.assert_array_equal(out[~erased], np.asarray(images)[~erased])
  # Each erased region is one rectangle.
  for e in erased:
    rows, cols = np.nonzero(e.any(1))[0], np.nonzero(e.any(0))[0]
    assert e.sum() == len(rows) * len(cols) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  # Per-class probability and per-class, per-channel value.
  out = np.asarray(fn(key, images, labels, knobs([0.0, 1.0], [[0.0, 0.0, 0.0], [5.0, 6.0, 7.0]])))
  np.testing.assert_array_equal(out[lab == 0], np.asarray(images)[lab == 0])
  assert (out[lab == 1] == [5.0, 6.0, 7.0]).all(-1).any((1, 2)).all()
  # Half probability: about half the images change.
  half = np.asarray(fn(key, images, labels, knobs([0.5, 0.5], zeros)))
  changed = (half != np.asarray(images)).any((1, 2, 3)).mean()
  assert 0.3 < changed < 0.7


def test_erase_batch_scalar_knobs_and_defaults():
  images, labels = _batch(b=4, hw=10)
  key = _keys(1)[0]
  fn = jax.jit(A.erase_batch)
  np.testing.assert_array_equal(fn(key, images, labels, {}), images)  # prob 0
  out = np.asarray(fn(key, images, labels, {'erase_prob': 1.0, 'erase_value': 9.0}))
  assert ((out == 9.0).all(-1).any((1, 2))).all()
