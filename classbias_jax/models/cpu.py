"""The ResNets of models/resnet.py tuned for XLA:CPU: the same networks, parameter tree
(names, shapes, initialisation) and dtype policy, run on a list of chunks of the batch
with a BatchNorm over all chunks, and models/conv.py's convolution with the weight
gradient's operands computed once (`materialize`). models.create_model gives this model
on CPU; why each piece pays there is measured in docs/benchmarks.md.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from classbias_jax.models.conv import conv_general_dilated
from classbias_jax.models import resnet
from classbias_jax.models.resnet import conv_init

# XLA:CPU trains faster on chunks of 32 images than on a batch of 128 (see ResNet) when
# images have at least CHUNK_MIN_PIXELS (ResNet-20 step at 32x32: 1.31x, ResNet-8 at
# 16x16: 1.07x; at 8x8: 0.97x, and a longer compile); other backends get whole batches.
CONV_BATCH_CHUNK = 32
CHUNK_MIN_PIXELS = 16 * 16

# The models run on a list of batch chunks (see ResNet): the blocks' ops on every chunk.
relu = lambda xs: [nn.relu(x) for x in xs]
CHUNKS = resnet.Ops(
    relu=relu, add=lambda xs, ys: [x + y for x, y in zip(xs, ys)],
    pad_shortcut=lambda xs, strides, extra: [resnet.WHOLE.pad_shortcut(x, strides, extra)
                                             for x in xs],
    channels=lambda xs: xs[0].shape[-1])


class Conv(nn.Module):
  """A bias-free convolution with flax nn.Conv's parameter and initialisation, one kernel
  for every chunk; models/conv.py's convolution (fast weight gradients under vmap)."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = 'SAME'
  dtype: Any = jnp.float32
  materialize: bool = False

  @nn.compact
  def __call__(self, xs):
    kernel = self.param('kernel', conv_init,
                        (*self.kernel_size, xs[0].shape[-1], self.features), jnp.float32)
    kernel = kernel.astype(self.dtype)
    return [conv_general_dilated(x.astype(self.dtype), kernel, self.strides, self.padding,
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 materialize=self.materialize) for x in xs]


class BatchNorm(nn.Module):
  """flax nn.BatchNorm (same variables and arithmetic: statistics in float32 by the fast
  variance E[x^2] - E[x]^2, running averages with `momentum`) over all the chunks of a
  batch together: the statistics are the whole batch's."""
  use_running_average: bool
  dtype: Any = jnp.float32
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, xs):
    features = (xs[0].shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32),
                            features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(xs[0].ndim - 1))
      count = sum(math.prod(x.shape[:-1]) for x in xs)
      f32 = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in xs]
      mean = sum(jnp.sum(x, axes) for x in f32) / count
      mean2 = sum(jnp.sum(jnp.square(x), axes) for x in f32) / count
      var = jnp.maximum(0.0, mean2 - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    mul = lax.rsqrt(var + self.epsilon) * self.param('scale', nn.initializers.ones, features,
                                                     jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)
    return [((x - mean) * mul + bias).astype(self.dtype) for x in xs]




class ResNet(nn.Module):
  """Generic ResNet. Input float [B, H, W, C]; output logits float32 [B, num_classes].

  The network runs on a list of chunks of the batch: every convolution and elementwise
  op acts on each chunk, BatchNorm's statistics are the whole batch's, so the function is
  the same as on the whole batch at once (up to the summation order of the statistics and
  of the weight gradients). XLA:CPU runs it faster in chunks of 32 images than whole:
  smaller convolutions stay in cache, its thunk executor runs independent chunks on
  different cores, and, the chunks being separate arrays, no op slices or concatenates a
  batch (measured side by side, docs/benchmarks.md).
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  num_classes: int
  block: str = 'basic'  # 'basic' or 'bottleneck'
  stem: str = 'cifar'  # 'cifar': 3x3 stride 1; 'imagenet': 7x7 stride 2 + 3x3 max pool
  shortcut: str = 'conv'
  dtype: Any = jnp.float32  # compute dtype; parameters and BN statistics stay float32
  # Images per chunk; -1: CONV_BATCH_CHUNK on CPU for images of at least CHUNK_MIN_PIXELS,
  # whole batches otherwise; 0: whole batches. A batch that is not a larger multiple of
  # the chunk runs whole.
  conv_batch_chunk: int = -1
  # Convolutions' weight-gradient operands computed once (models/conv.py `materialized`);
  # -1: on CPU, where it pays, 0: off, 1: on.
  materialize: int = -1

  def materializes(self) -> bool:
    """`materialize` resolved for the default backend."""
    if self.materialize < 0:
      return jax.default_backend() == 'cpu'
    return bool(self.materialize)

  @nn.compact
  def __call__(self, x, train: bool):
    chunk = self.conv_batch_chunk
    if chunk < 0:
      big = x.shape[1] * x.shape[2] >= CHUNK_MIN_PIXELS
      chunk = CONV_BATCH_CHUNK if jax.default_backend() == 'cpu' and big else 0
    conv = functools.partial(Conv, dtype=self.dtype, materialize=self.materializes())
    norm = functools.partial(BatchNorm, use_running_average=not train, dtype=self.dtype)
    x = x.astype(self.dtype)
    size = x.shape[0]
    if 0 < chunk < size and size % chunk == 0:
      xs = [x[start:start + chunk] for start in range(0, size, chunk)]
    else:
      xs = [x]
    if self.stem == 'imagenet':
      xs = relu(norm()(conv(self.widths[0], (7, 7), (2, 2), padding=((3, 3), (3, 3)))(xs)))
      xs = [nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1))) for x in xs]
    else:
      xs = relu(norm()(conv(self.widths[0], (3, 3))(xs)))
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        xs = resnet.BLOCKS[self.block](width, strides, self.shortcut, conv, norm,
                                       ops=CHUNKS)(xs)
    features = jnp.concatenate([jnp.mean(x, axis=(1, 2)) for x in xs])
    return nn.Dense(self.num_classes, dtype=self.dtype)(features).astype(jnp.float32)

