"""models/conv.py: the same gradients as lax's convolution, vmapped or not, without the
batch-grouped weight-gradient convolution under vmap."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from classbias_jax.models import create_model
from classbias_jax.models.conv import conv_general_dilated

DN = ('NHWC', 'HWIO', 'NHWC')


def loss_of(conv, strides):
  def loss(w, x):
    return jnp.sum(jnp.sin(conv(x, w, strides, 'SAME', dimension_numbers=DN)))
  return loss


@pytest.mark.parametrize('strides', [(1, 1), (2, 2)])
def test_vmapped_gradients_match_lax(strides):
  x = jax.random.normal(jax.random.key(0), (3, 4, 8, 8, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5, 6))
  grad = lambda conv: jax.vmap(jax.grad(loss_of(conv, strides), argnums=(0, 1)))
  ref, ours = grad(lax.conv_general_dilated)(w, x), grad(conv_general_dilated)(w, x)
  for a, b in zip(ref, ours):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  # Unbatched: the plain gradient.
  one = jax.grad(loss_of(conv_general_dilated, strides))(w[1], x[1])
  np.testing.assert_allclose(one, ref[0][1], rtol=1e-4, atol=1e-4)


def test_vmapped_weight_gradient_is_not_a_grouped_convolution():
  """lax's vmapped gradient has three grouped convs (forward, input and weight gradient);
  ours two: the weight gradients are M ordinary convolutions."""
  x = jnp.ones((4, 2, 8, 8, 3))
  w = jnp.ones((4, 3, 3, 3, 8))

  def convs(conv):  # group counts of the convolutions XLA compiles
    grad = jax.vmap(jax.grad(loss_of(conv, (1, 1)), argnums=(0, 1)))
    text = jax.jit(grad).lower(w, x).compile().as_text()
    return sorted(len(re.findall(r'(?:batch|feature)_group_count=4', line))
                  for line in text.splitlines() if ' convolution(' in line)

  assert convs(lax.conv_general_dilated) == [1, 1, 1]
  assert convs(conv_general_dilated) == [0, 0, 0, 0, 1, 1]


def test_resnet_vmapped_gradients_match_per_model_gradients():
  model = create_model('tiny', 3)
  images = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
  keys = jax.random.split(jax.random.key(3), 2)
  variables = jax.vmap(lambda k: model.init(k, images, train=False))(keys)

  def loss(params, batch_stats):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                            train=True, mutable=['batch_stats'])
    return jnp.mean(logits ** 2)

  batched = jax.vmap(jax.grad(loss))(variables['params'], variables['batch_stats'])
  for m in range(2):
    one = jax.grad(loss)(jax.tree.map(lambda a: a[m], variables['params']),
                         jax.tree.map(lambda a: a[m], variables['batch_stats']))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
      np.testing.assert_allclose(b[m], a, rtol=1e-4, atol=1e-6)


def test_batch_chunks_give_the_same_convolution_and_gradients():
  """batch_chunk=4 on a batch of 8: two convolutions, the same outputs and gradients."""
  x = jax.random.normal(jax.random.key(4), (8, 6, 6, 3))
  w = jax.random.normal(jax.random.key(5), (3, 3, 3, 4))
  whole = loss_of(conv_general_dilated, (2, 2))
  chunked = loss_of(functools.partial(conv_general_dilated, batch_chunk=4), (2, 2))
  np.testing.assert_allclose(chunked(w, x), whole(w, x), rtol=1e-5)
  for a, b in zip(jax.grad(whole, argnums=(0, 1))(w, x), jax.grad(chunked, argnums=(0, 1))(w, x)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  text = jax.jit(chunked).lower(w, x).compile().as_text()
  assert sum(' convolution(' in line for line in text.splitlines()) == 2
  # A batch that is not a multiple of the chunk is convolved whole.
  odd = functools.partial(conv_general_dilated, batch_chunk=3)
  np.testing.assert_allclose(odd(x, w, (1, 1), 'SAME', dimension_numbers=DN),
                             lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                      dimension_numbers=DN), rtol=1e-5)


def test_resnet_convolves_in_chunks_on_cpu_only_when_asked():
  model = create_model('tiny', 3)
  assert model.conv_batch_chunk == -1  # auto: CONV_BATCH_CHUNK on CPU
  images = jnp.ones((64, 8, 8, 3))
  variables = model.init(jax.random.key(0), images, train=False)

  def convs(m):
    return str(jax.make_jaxpr(lambda v: m.apply(v, images, train=False))(variables)).count(
        'conv_general_dilated[')

  assert convs(model) == 2 * convs(model.clone(conv_batch_chunk=0))
