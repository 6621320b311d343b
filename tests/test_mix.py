"""Mixup, CutMix (mix.py) against a numpy transcription of timm's arithmetic for given
draws, and label smoothing against optax.smooth_labels."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from classbias_jax import augment, mix

# ---- timm/data/mixup.py (Mixup in batch mode), transcribed to numpy [B, H, W, C]; the
# np.random calls are replaced by the draws given in `rng`.


class GivenDraws:
  """Stands in for np.random: rand() and beta() and randint() return the given draws."""

  def __init__(self, u_apply, u_switch, lam_mixup, lam_cutmix, row, col, alphas):
    self.rands = [u_apply, u_switch]
    self.betas = {alphas[0]: lam_mixup, alphas[1]: lam_cutmix}
    self.ints = [row, col]

  def rand(self):
    return self.rands.pop(0)

  def beta(self, a, b):
    return self.betas[a]

  def randint(self, low, high, size=None):
    value = self.ints.pop(0)
    assert low <= value < high
    return value


def timm_one_hot(x, num_classes, on_value=1., off_value=0.):
  out = np.full((len(x), num_classes), off_value)
  out[np.arange(len(x)), x] = on_value
  return out


def timm_mixup_target(target, num_classes, lam=1., smoothing=0.0):
  off_value = smoothing / num_classes
  on_value = 1. - smoothing + off_value
  y1 = timm_one_hot(target, num_classes, on_value=on_value, off_value=off_value)
  y2 = timm_one_hot(target[::-1], num_classes, on_value=on_value, off_value=off_value)
  return y1 * lam + y2 * (1. - lam)


def timm_rand_bbox(img_shape, lam, rng, margin=0.):
  ratio = np.sqrt(1 - lam)
  img_h, img_w = img_shape
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  margin_y, margin_x = int(margin * cut_h), int(margin * cut_w)
  cy = rng.randint(0 + margin_y, img_h - margin_y)
  cx = rng.randint(0 + margin_x, img_w - margin_x)
  yl = np.clip(cy - cut_h // 2, 0, img_h)
  yh = np.clip(cy + cut_h // 2, 0, img_h)
  xl = np.clip(cx - cut_w // 2, 0, img_w)
  xh = np.clip(cx + cut_w // 2, 0, img_w)
  return yl, yh, xl, xh


def timm_cutmix_bbox_and_lam(img_shape, lam, rng, correct_lam=True):
  yl, yu, xl, xu = timm_rand_bbox(img_shape, lam, rng)
  if correct_lam:
    bbox_area = (yu - yl) * (xu - xl)
    lam = 1. - bbox_area / float(img_shape[-2] * img_shape[-1])
  return (yl, yu, xl, xu), lam


def timm_params_per_batch(rng, mixup_alpha, cutmix_alpha, mix_prob, switch_prob):
  lam = 1.
  use_cutmix = False
  if rng.rand() < mix_prob:
    if mixup_alpha > 0. and cutmix_alpha > 0.:
      use_cutmix = rng.rand() < switch_prob
      lam_mix = rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else \
          rng.beta(mixup_alpha, mixup_alpha)
    elif mixup_alpha > 0.:
      lam_mix = rng.beta(mixup_alpha, mixup_alpha)
    elif cutmix_alpha > 0.:
      use_cutmix = True
      lam_mix = rng.beta(cutmix_alpha, cutmix_alpha)
    else:
      assert False
    lam = float(lam_mix)
  return lam, use_cutmix


def timm_mix_batch(x, rng, alphas, mix_prob, switch_prob):
  """Mixup._mix_batch on x [B, H, W, C] (modified in place); returns lambda."""
  lam, use_cutmix = timm_params_per_batch(rng, *alphas, mix_prob, switch_prob)
  if lam == 1.:
    return 1.
  if use_cutmix:
    (yl, yh, xl, xh), lam = timm_cutmix_bbox_and_lam(x.shape[1:3], lam, rng)
    x[:, yl:yh, xl:xh] = x[::-1][:, yl:yh, xl:xh]
  else:
    x_flipped = x[::-1] * (1. - lam)
    x[:] = x * lam + x_flipped
  return lam


def timm_mixup(x, target, num_classes, rng, alphas, mix_prob, switch_prob, smoothing):
  """Mixup.__call__ in batch mode."""
  x = x.copy()
  lam = timm_mix_batch(x, rng, alphas, mix_prob, switch_prob)
  return x, timm_mixup_target(target, num_classes, lam, smoothing)

# ---- the checks


def _ours(images, labels, num_classes, draws, alphas, mix_prob, switch_prob, smoothing):
  """mix_choice and mix_given for the same draws, after the smoothing kernel."""
  u_apply, u_switch, lam_mixup, lam_cutmix, row, col = draws
  lam, use_cutmix = mix.mix_choice(u_apply, u_switch, jnp.float32(lam_mixup),
                                   jnp.float32(lam_cutmix), *alphas, mix_prob, switch_prob)
  targets = jax.vmap(lambda t: mix.smooth(None, t, smoothing))(
      jax.nn.one_hot(labels, num_classes))
  return mix.mix_given(jnp.asarray(images), targets, lam, use_cutmix, row, col)


@pytest.mark.parametrize('alphas', [(1.0, 0.0), (0.0, 1.0), (0.8, 1.0), (0.2, 0.0)])
def test_mixup_and_cutmix_are_timms_arithmetic(alphas):
  """For 40 draws per setting (coins, Beta draws, box centres), the images and the soft
  targets equal timm's Mixup in batch mode (label smoothing 0.1 inside its target)."""
  rng = np.random.default_rng(int(sum(alphas) * 10))
  b, h, w, k = 6, 9, 11, 5
  labels = rng.integers(0, k, b)
  hits = {'cutmix': 0, 'mixup': 0, 'none': 0}
  for _ in range(40):
    images = rng.uniform(-2, 2, (b, h, w, 3)).astype(np.float32)
    draws = (rng.uniform(), rng.uniform(), np.float32(rng.beta(0.5, 0.5)),
             np.float32(rng.beta(0.5, 0.5)), int(rng.integers(0, h)), int(rng.integers(0, w)))
    mix_prob, switch_prob = 0.8, 0.4
    ref_x, ref_t = timm_mixup(images, labels, k, GivenDraws(*draws, alphas), alphas, mix_prob,
                              switch_prob, 0.1)
    x, t = _ours(images, labels, k, draws, alphas, mix_prob, switch_prob, 0.1)
    np.testing.assert_allclose(x, ref_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t, ref_t, rtol=1e-6, atol=1e-6)
    changed = not np.array_equal(ref_x, images)
    pasted = changed and np.isin(ref_x, images).all()
    hits['cutmix' if pasted else 'mixup' if changed else 'none'] += 1
  # Every branch of the setting was taken at least once.
  assert hits['none'] > 0
  assert (hits['cutmix'] > 0) == (alphas[1] > 0) and (hits['mixup'] > 0) == (alphas[0] > 0)


def test_cutmix_box_corrects_lambda_at_the_border():
  """A box centred on a corner is clipped: lambda is 1 - the clipped area's share."""
  (top, bottom, left, right), lam = mix.cutmix_box(jnp.float32(0.36), 0, 0, 10, 10)
  # side int(10 * 0.8) = 8, half 4: rows and columns 0..3 remain of -4..3.
  assert (int(top), int(bottom), int(left), int(right)) == (0, 4, 0, 4)
  assert float(lam) == pytest.approx(1 - 16 / 100)


def test_mix_draws_follow_the_knobs():
  """Over 4000 batches: mixed with probability mix_prob, CutMix with probability
  switch_prob when both alphas are on, lambda ~ Beta(alpha, alpha) (mean 1/2, variance
  1 / (4 (2 alpha + 1))); alpha 0 on both or mix_prob 0: never mixed."""
  keys = jax.random.split(jax.random.key(3), 4000)
  draw = jax.jit(jax.vmap(lambda k, a, c, p, s: mix.mix_draws(k, 8, 8, a, c, p, s),
                          in_axes=(0, None, None, None, None)))
  lam, cut, row, col = (np.asarray(v) for v in draw(keys, 0.4, 1.0, 0.7, 0.25))
  mixed = lam < 1
  assert mixed.mean() == pytest.approx(0.7, abs=0.03)
  assert cut[mixed].mean() == pytest.approx(0.25, abs=0.03) and not cut[~mixed].any()
  for kind, alpha in ((cut, 1.0), (~cut & mixed, 0.4)):
    assert lam[kind].mean() == pytest.approx(0.5, abs=0.03)
    assert lam[kind].var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.15)
  assert row.min() == col.min() == 0 and row.max() == col.max() == 7
  for args in ((0.0, 0.0, 1.0, 0.5), (1.0, 1.0, 0.0, 0.5)):
    assert (np.asarray(draw(keys[:200], *args)[0]) == 1).all()


def test_mix_per_model_with_its_own_draws():
  """Under vmap over models, each model's alphas are its own; models that share a key
  share the box centre and coins; a model with both alphas 0 leaves its batch alone."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(4, 8, 8, 3)), jnp.float32)
  targets = jax.nn.one_hot(jnp.arange(4) % 3, 3)
  key = jax.random.key(1)
  keys = jnp.stack([key, key, key, jax.random.key(2)])
  mixup = jnp.array([0.0, 1.0, 1.0, 1.0])
  fn = jax.jit(jax.vmap(mix.mix, in_axes=(0, None, None, 0, None, None, None)))
  x, t = fn(keys, images, targets, mixup, 0.0, 1.0, 0.5)
  np.testing.assert_array_equal(x[0], images)
  np.testing.assert_array_equal(t[0], targets)
  np.testing.assert_array_equal(x[1], x[2])
  assert not np.allclose(x[1], x[3])


def test_label_smoothing_is_optax_per_class():
  """The smoothing kernel through the targets stage equals optax.smooth_labels, with a
  class's targets smoothed by its own value when given per class."""
  labels = jnp.array([0, 1, 2, 1, 0])
  one_hot = jax.nn.one_hot(labels, 3)
  knobs = {'label_smoothing': jnp.float32(0.2)}
  out = augment.run_stage('targets', jax.random.key(0), one_hot, labels, knobs, ('smooth',))
  np.testing.assert_array_equal(out, optax.smooth_labels(one_hot, 0.2))
  table = jnp.array([0.0, 0.3, 0.6])
  out = augment.run_stage('targets', jax.random.key(0), one_hot, labels,
                          {'label_smoothing': table}, ('smooth',))
  for i, label in enumerate(np.asarray(labels)):
    np.testing.assert_allclose(out[i], optax.smooth_labels(one_hot[i], float(table[label])),
                               rtol=1e-7)
  np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)


def test_the_step_loss_takes_the_soft_targets():
  """Two models that differ only in label smoothing (0 and 0.3) report, for their first
  step, the mean cross-entropy of their logits against optax.smooth_labels's targets."""
  from conftest import init_states, tiny_config, tiny_plan

  from classbias_jax.models import create_model
  from classbias_jax.train import one_model
  config = tiny_config(**{'sweep__name': 'loss.label_smoothing', 'sweep__values': (0.0, 0.3),
                          'seeds': 1})
  plan = tiny_plan(config)
  assert plan.ops == ('smooth',)
  model = create_model('tiny', 10)
  state = init_states(plan, model)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (64, 8, 8, 1)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
  step = jax.vmap(one_model.make_train_step(plan, model), in_axes=(0, 0, None))
  perms = jnp.tile(jnp.arange(64), (2, 1))
  _, metrics = step(state, one_model.ModelInputs(plan.knobs, plan.keys()['aug'], perms),
                    one_model.Batch(images, labels, 0, 0))
  variables = {'params': jax.tree.map(lambda v: v[0], state['params']),
               'batch_stats': jax.tree.map(lambda v: v[0], state['batch_stats'])}
  logits, _ = model.apply(variables, (images / 255.0 - 0.5) / 0.25, train=True,
                          mutable=['batch_stats'])
  for m, a in enumerate((0.0, 0.3)):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), a)
    expected = optax.softmax_cross_entropy(logits, targets).mean()
    assert float(metrics['loss'][m]) == pytest.approx(float(expected), rel=1e-5)
  assert abs(float(metrics['loss'][1]) - float(metrics['loss'][0])) > 1e-3


def test_planted_mixed_class():
  """data.planted_mixed adds an eleventh class whose images a Mixup ('blend') or CutMix
  ('paste') of none-hlines and none-vlines reproduces: both stripe directions in every
  image, where the two classes show one each; the ten classes' images are unchanged, and a
  bad setting is a one-line error."""
  import ml_collections
  from classbias_jax.data import planted
  from classbias_jax.errors import ConfigError
  base = {'name': 'planted', 'planted_train_per_class': 12}
  plain = planted.load(ml_collections.ConfigDict(base))

  def log_ratio(images):  # log |change down| / |change across| of the centre's grey level
    grey = images.astype(np.float64).mean(-1)[:, 8:24, 8:24]
    return np.median(np.log(np.abs(np.diff(grey, axis=1)).mean((1, 2))
                            / np.abs(np.diff(grey, axis=2)).mean((1, 2))))

  h, v = planted.CLASS_NAMES.index('none-hlines'), planted.CLASS_NAMES.index('none-vlines')
  for kind, name in planted.MIXED_CLASSES.items():
    ds = planted.load(ml_collections.ConfigDict(dict(base, planted_mixed=kind,
                                                     planted_mixed_train=5)))
    assert ds.class_names[-1] == name and len(ds.class_names) == 11
    assert np.bincount(ds.train_labels).tolist() == [12] * 10 + [5]
    np.testing.assert_array_equal(ds.train_images[:120], plain.train_images)
    ratio = {c: log_ratio(ds.test_images[ds.test_labels == c]) for c in (h, v, 10)}
    assert ratio[h] > 0.6 and ratio[v] < -0.6 and abs(ratio[10]) < 0.4, (kind, ratio)
  for field, value, match in (('planted_mixed', 'swap', 'planted_mixed'),
                              ('planted_mixed_train', 13, 'must be in 1..12')):
    bad = dict(base, planted_mixed='blend', planted_mixed_train=5)
    bad[field] = value
    with pytest.raises(ConfigError, match=match):
      planted.load(ml_collections.ConfigDict(bad))
