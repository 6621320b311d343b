"""models/conv.py and the ResNets: the same gradients as lax's convolution, vmapped or not,
without the batch-grouped weight-gradient convolution under vmap; models/cpu.py's ResNet:
the same function in chunks as whole."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from classbias_jax.models import create_model
from classbias_jax.models.conv import conv_general_dilated, materialized
from classbias_jax.models.cpu import BatchNorm, Conv
from classbias_jax.models.resnet import conv_init

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


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_resnet_vmapped_gradients_match_per_model_gradients(backend):
  """Both ResNets (the plain one, as GPUs get it, runs here on the CPU)."""
  model = create_model('tiny', 3, backend=backend)
  images = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
  keys = jax.random.split(jax.random.key(3), 2)
  variables = jax.vmap(lambda k: model.init(k, images, train=False))(keys)

  def loss(params, batch_stats):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                            train=True, mutable=['batch_stats'])
    return jnp.mean(logits ** 2)

  batched = jax.jit(jax.vmap(jax.grad(loss)))(variables['params'], variables['batch_stats'])
  for m in range(2):
    one = jax.jit(jax.grad(loss))(jax.tree.map(lambda a: a[m], variables['params']),
                         jax.tree.map(lambda a: a[m], variables['batch_stats']))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
      np.testing.assert_allclose(b[m], a, rtol=1e-4, atol=1e-6)


def test_materialized_operands_give_the_same_gradients():
  """materialize=True: the same function and gradients, vmapped or not, and the operands of
  the weight gradient are conditionals' results in the compiled program."""
  x = jax.random.normal(jax.random.key(4), (2, 8, 6, 6, 3))
  w = jax.random.normal(jax.random.key(5), (2, 3, 3, 3, 4))
  plain = loss_of(conv_general_dilated, (2, 2))
  once = loss_of(functools.partial(conv_general_dilated, materialize=True), (2, 2))
  np.testing.assert_allclose(once(w[0], x[0]), plain(w[0], x[0]), rtol=1e-6)
  for grad in (jax.grad, lambda f, **kw: jax.vmap(jax.grad(f, **kw))):
    args = (w, x) if grad is not jax.grad else (w[0], x[0])
    for a, b in zip(grad(plain, argnums=(0, 1))(*args), grad(once, argnums=(0, 1))(*args)):
      np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
  conditionals = lambda f: jax.jit(jax.grad(f)).lower(w[0], x[0]).compile().as_text().count(
      ' conditional(')
  assert conditionals(plain) == 0 and conditionals(once) == 2
  # Under vmap too: the conditional takes the batched array (no select).
  text = jax.jit(jax.vmap(jax.grad(once))).lower(w, x).compile().as_text()
  assert text.count(' conditional(') == 2
  nan = jnp.arange(6.0).reshape(2, 3).at[0, 0].set(jnp.nan)
  np.testing.assert_array_equal(jax.jit(materialized)(nan), nan)


def test_conv_and_batchnorm_are_flax_modules_on_chunk_lists():
  """Conv and BatchNorm take flax nn.Conv's / nn.BatchNorm's variables and compute the
  same, on one chunk or on a list of chunks (statistics of the whole batch)."""
  x = jax.random.normal(jax.random.key(6), (8, 6, 6, 3)) * 2 + 1
  ref = nn.Conv(5, (3, 3), (2, 2), padding='SAME', use_bias=False, kernel_init=conv_init)
  ours = Conv(5, (3, 3), (2, 2))
  v_ref, v_ours = ref.init(jax.random.key(7), x), ours.init(jax.random.key(7), [x])
  np.testing.assert_array_equal(v_ours['params']['kernel'], v_ref['params']['kernel'])
  y = ref.apply(v_ref, x)
  np.testing.assert_allclose(ours.apply(v_ref, [x])[0], y, rtol=1e-6)
  np.testing.assert_allclose(jnp.concatenate(ours.apply(v_ref, [x[:4], x[4:]])), y, rtol=1e-6)

  bn_ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  bn = BatchNorm(use_running_average=False)
  variables = bn_ref.init(jax.random.key(8), y)
  variables = {'params': {'scale': jnp.arange(1.0, 6.0), 'bias': jnp.arange(5.0)},
               'batch_stats': variables['batch_stats']}
  out_ref, stats_ref = bn_ref.apply(variables, y, mutable=['batch_stats'])
  for chunks in ([y], [y[:4], y[4:]]):
    out, stats = bn.apply(variables, chunks, mutable=['batch_stats'])
    np.testing.assert_allclose(jnp.concatenate(out), out_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_ref), jax.tree.leaves(stats)):
      np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
  evaluated = BatchNorm(use_running_average=True).apply({**variables, **stats_ref}, [y])[0]
  np.testing.assert_allclose(evaluated, nn.BatchNorm(use_running_average=True).apply(
      {**variables, **stats_ref}, y), rtol=1e-6)


def test_resnet_in_chunks_is_the_same_function():
  """A batch of 8 in chunks of 4: twice the convolutions, the same logits, statistics and
  gradients; a batch that is not a larger multiple of the chunk runs whole."""
  model = create_model('tiny', 3).clone(conv_batch_chunk=4)
  whole = model.clone(conv_batch_chunk=0)
  images = jax.random.normal(jax.random.key(9), (8, 8, 8, 3))
  variables = model.init(jax.random.key(0), images, train=False)

  def loss(params, m):
    logits, new = m.apply({'params': params, 'batch_stats': variables['batch_stats']},
                          images, train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(logits)), (logits, new)

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, (logits_c, stats_c)), grads_c = grad(variables['params'], model)
  (_, (logits_w, stats_w)), grads_w = grad(variables['params'], whole)
  np.testing.assert_allclose(logits_c, logits_w, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves((stats_w, grads_w)), jax.tree.leaves((stats_c, grads_c))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)

  def convs(m, x):
    return str(jax.make_jaxpr(lambda v: m.apply(v, x, train=False))(variables)).count(
        'conv_general_dilated')

  assert convs(model, images) == 2 * convs(whole, images)
  assert convs(model, images[:6]) == convs(whole, images[:6])


def test_resnet_chunks_and_materializes_on_cpu_by_default():
  """Auto: chunks of 32 for images of 16x16 pixels or more, operands materialized."""
  model = create_model('tiny', 3)
  assert model.conv_batch_chunk == -1 and model.materialize == -1  # auto: on CPU
  images = jnp.ones((64, 16, 16, 3))
  variables = model.init(jax.random.key(0), images, train=False)

  def grad_program(m, images=images):
    loss = lambda p: jnp.sum(m.apply({**variables, 'params': p}, images, train=True,
                                     mutable=['batch_stats'])[0])
    return str(jax.make_jaxpr(jax.grad(loss))(variables['params']))

  assert jax.default_backend() == 'cpu'
  chunked, whole = grad_program(model), grad_program(model.clone(conv_batch_chunk=0))
  assert chunked.count('conv_general_dilated') == 2 * whole.count('conv_general_dilated')
  assert ' cond[' in chunked
  assert ' cond[' not in grad_program(model.clone(materialize=0))
  small = images[:, :8, :8]
  assert grad_program(model, small).count('conv_general_dilated') == grad_program(
      model.clone(conv_batch_chunk=0), small).count('conv_general_dilated')
