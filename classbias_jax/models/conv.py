"""A convolution whose weight gradient stays fast when the model axis is vmapped.

Under `jax.vmap` over models (strategy 'vmap', and the vmapped chunks of 'chunked'), every
convolution of the M models becomes one grouped convolution, and its weight gradient one
convolution with `batch_group_count = M`. cuDNN runs that weight gradient very slowly:
measured on an H100 (docs/benchmarks.md), 16 vmapped ResNet-20s spent 92% of the step in
convolutions, the 16-channel weight gradients at 7.3 ms each where one model's takes
0.1 ms, and the vmapped step was no faster than the 16 models one after another.

`conv_general_dilated` here computes the same function as `lax.conv_general_dilated`, with
the same forward and input gradient, but its weight gradient is a `custom_vmap` function:
batched over models, it computes the M weight gradients as M ordinary convolutions
(unrolled in the program) instead of one batch-grouped convolution. Outside vmap it is the
plain weight gradient, so unvmapped programs are unchanged. Numerically it is the same
gradient (tested against the plain vmapped one).

It can also convolve a batch in chunks (`batch_chunk`), which XLA:CPU runs faster than
one convolution over the whole batch; models/resnet.py turns that on for CPU only.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         batch_chunk: int = 0):
  """`lax.conv_general_dilated` (same arguments) with a model-axis-friendly weight
  gradient; flax's `nn.Conv(conv_general_dilated=...)` takes it.

  batch_chunk > 0: a batch that is a larger multiple of it is convolved in chunks of that
  many images (one convolution each, concatenated; gradients likewise). The same result
  up to the summation order of the weight gradient. On XLA:CPU this is faster: measured
  side by side (docs/benchmarks.md), a ResNet-20 step at batch 128 in chunks of 32 ran
  1.1-1.2x faster and a ResNet-18 step 1.27x (smaller convolutions stay in cache, and
  the thunk executor runs independent chunks on different cores).
  """
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  batch_dim, size = dims.lhs_spec[0], lhs.shape[dims.lhs_spec[0]]
  if 0 < batch_chunk < size and size % batch_chunk == 0 and batch_group_count == 1:
    parts = [_with_per_model_weight_grad(
        conv, lax.slice_in_dim(lhs, start, start + batch_chunk, axis=batch_dim), rhs)
             for start in range(0, size, batch_chunk)]
    return lax.concatenate(parts, dims.out_spec[0])
  return _with_per_model_weight_grad(conv, lhs, rhs)


def _with_per_model_weight_grad(conv, lhs, rhs):
  """conv(lhs, rhs) with the custom weight gradient described in the module docstring."""

  def weight_grad(x, g, w):
    """d(sum(g * conv(x, w))) / dw, by transposing the map w -> conv(x, w), which is
    linear (w gives only its type: no forward convolution is traced)."""
    return jax.linear_transpose(lambda w: conv(x, w), w)(g)[0]

  batched_weight_grad = jax.custom_batching.custom_vmap(weight_grad)

  @batched_weight_grad.def_vmap
  def _(axis_size, in_batched, *operands):
    pick = lambda i: [a[i] if batched else a for a, batched in zip(operands, in_batched)]
    return jnp.stack([weight_grad(*pick(i)) for i in range(axis_size)]), True

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def f_fwd(x, w):
    return conv(x, w), (x, w)

  def f_bwd(residuals, g):
    x, w = residuals
    input_grad = jax.linear_transpose(lambda x: conv(x, w), x)(g)[0]
    return input_grad, batched_weight_grad(x, g, w)

  f.defvjp(f_fwd, f_bwd)
  return f(lhs, rhs)
