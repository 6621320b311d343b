"""The plain ResNet (models/resnet.py) and the XLA:CPU one (models/cpu.py): the same
parameter tree, function, statistics and gradients; create_model picks one by backend."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from classbias_jax.errors import ConfigError
from classbias_jax.models import MODELS, cpu, create_model, resnet
from classbias_jax.models.conv import conv_general_dilated


def both(name, **kw):
  return create_model(name, 10, backend='cpu', **kw), create_model(name, 10, backend='gpu', **kw)


def both_bottleneck():
  """A small ResNet-50-like pair: ImageNet stem, Bottleneck blocks, projection shortcuts."""
  spec = dict(stage_sizes=(1, 1), widths=(4, 8), num_classes=10, block='bottleneck',
              stem='imagenet', shortcut='conv')
  return cpu.ResNet(**spec), resnet.ResNet(conv_general_dilated=conv_general_dilated, **spec)


PAIRS = {'tiny': lambda: both('tiny'), 'resnet8': lambda: both('resnet8'),
         'bottleneck': both_bottleneck}


@pytest.mark.parametrize('name', list(MODELS))
def test_parameter_trees_are_identical(name):
  """Names, shapes and dtypes, on a batch the CPU model runs in chunks."""
  images = jax.ShapeDtypeStruct((64, 32, 32, 3), jnp.float32)
  trees = [jax.eval_shape(lambda x: m.init(jax.random.key(0), x, train=False), images)
           for m in both(name, width=0.25)]
  assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
  assert jax.tree.leaves(trees[0]) == jax.tree.leaves(trees[1])
  assert {a.dtype for a in jax.tree.leaves(trees[0])} == {jnp.dtype(jnp.float32)}


def random_variables(model, images, seed=0):
  """Variables of `model`'s shapes with random values at the scale of its initialisation
  (cheaper than compiling its init), and random running statistics."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(0.0, (2 / np.prod(s.shape[:-1])) ** 0.5, s.shape)
    else:
      value = rng.uniform(0.5, 1.5, s.shape) if name in ('var', 'scale') else rng.normal(
          0.0, 0.2, s.shape)
    return jnp.asarray(value, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize('pair', list(PAIRS))
def test_same_function_statistics_and_gradients(pair):
  """64 images of 16x16: the CPU model runs two chunks of 32 (twice the convolutions)."""
  on_cpu, plain = PAIRS[pair]()
  images = jnp.asarray(np.random.default_rng(1).normal(0.5, 2.0, (64, 16, 16, 3)), jnp.float32)
  variables = random_variables(on_cpu, images)

  # Compiles in half the time: what is compared is the two models' programs, not XLA's
  # optimisations of them.
  @functools.partial(jax.jit, static_argnums=1,
                     compiler_options={'xla_backend_optimization_level': 0})
  def run(params, model):
    def loss(params):
      logits, new = model.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                images, train=True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(logits)), (logits, new['batch_stats'])

    grads, (logits, stats) = jax.grad(loss, has_aux=True)(params)
    evaluated = model.apply({'params': params, 'batch_stats': stats}, images, train=False)
    return grads, logits, stats, evaluated

  grads_c, logits_c, stats_c, eval_c = run(variables['params'], on_cpu)
  grads_p, logits_p, stats_p, eval_p = run(variables['params'], plain)
  # Float32 sums in another order: errors relative to each array's largest value.
  close = lambda tol: lambda a, b: np.testing.assert_allclose(
      b, a, rtol=1e-4, atol=tol * max(1.0, float(np.max(np.abs(a)))))
  jax.tree.map(close(1e-5), (logits_c, eval_c, grads_c), (logits_p, eval_p, grads_p))
  jax.tree.map(close(1e-6), stats_c, stats_p)
  assert jax.tree.structure(grads_c) == jax.tree.structure(variables['params'])
  assert not np.allclose(eval_c, logits_c, atol=1e-2)  # the running statistics count

  def convs(model):
    program = jax.make_jaxpr(lambda v: model.apply(v, images, train=False))(variables)
    return str(program).count('conv_general_dilated')

  assert convs(on_cpu) == 2 * convs(plain)


def test_create_model_picks_the_model_by_backend():
  assert jax.default_backend() == 'cpu'
  for backend in ('cpu', None):
    model = create_model('resnet20', 10, backend=backend)
    assert type(model) is cpu.ResNet
    assert model.materializes() and not model.clone(materialize=0).materializes()
    assert model.conv_batch_chunk == -1
  for backend in ('gpu', 'tpu'):
    model = create_model('resnet20', 10, backend=backend)
    assert type(model) is resnet.ResNet and not hasattr(model, 'materialize')
    assert model.conv_general_dilated is conv_general_dilated
  model = create_model('resnet50', 100, width=0.5, dtype=jnp.bfloat16, backend='gpu')
  assert (model.widths, model.block, model.num_classes) == ((32, 64, 128, 256),
                                                            'bottleneck', 100)
  assert model.dtype == jnp.bfloat16
  with pytest.raises(ConfigError, match='resnet9'):
    create_model('resnet9', 10)


def test_plain_model_keeps_float32_parameters_and_logits_in_bfloat16():
  model = create_model('tiny', 10, dtype=jnp.bfloat16, backend='gpu')
  images = jnp.ones((4, 8, 8, 3))
  variables = random_variables(model, images)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, new = jax.eval_shape(
      lambda v: model.apply(v, images, train=True, mutable=['batch_stats']), variables)
  assert logits.dtype == jnp.float32
  assert {a.dtype for a in jax.tree.leaves(new)} == {jnp.dtype(jnp.float32)}
  program = str(jax.make_jaxpr(lambda v: model.apply(v, images, train=False))(variables))
  assert 'bf16[4,8,8,8]' in program
