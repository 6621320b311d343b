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

On XLA:CPU it can also compute the weight gradient's operands once (`materialize`), see
`materialized`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         materialize: bool = False):
  """`lax.conv_general_dilated` (same arguments) with a model-axis-friendly weight
  gradient.

  materialize: the input (forward) and the output gradient (backward) pass through
  `materialized` before the weight gradient reads them. The same numbers; faster on
  XLA:CPU (docs/benchmarks.md), a conditional more on GPU/TPU.
  """
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  return _with_per_model_weight_grad(conv, lhs, rhs, materialize)


@jax.custom_batching.custom_vmap
def materialized(x):
  """x, as the result of a conditional whose branches both return x.

  XLA:CPU fuses elementwise producers into every consumer that can take them, among them
  the transposes that lay out each weight-gradient convolution's operands, and recomputes
  them there in a slow transposing loop: measured (docs/benchmarks.md), this made the
  transposes a third of a ResNet-20 step. A conditional's result cannot be fused into
  its consumers, so it is computed once. (`lax.optimization_barrier` does not help:
  XLA:CPU removes it before fusion.) The predicate reads x, so the compiler cannot fold
  it; both branches give x, NaN or not. Under vmap the conditional takes the whole
  batched array (a batched predicate would turn it into a fusible select).
  """
  first = x.reshape(-1)[0]
  return lax.cond(jnp.isnan(first), lambda v: v + 0, lambda v: v, x)


@materialized.def_vmap
def _(axis_size, in_batched, x):
  return materialized(x), in_batched[0]


def _with_per_model_weight_grad(conv, lhs, rhs, materialize: bool = False):
  """conv(lhs, rhs) with the custom weight gradient described in the module docstring."""
  once = materialized if materialize else (lambda a: a)

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
    x = once(x)
    return conv(x, w), (x, w)

  def f_bwd(residuals, g):
    x, w = residuals
    g = once(g)
    input_grad = jax.linear_transpose(lambda x: conv(x, w), x)(g)[0]
    return input_grad, batched_weight_grad(x, g, w)

  f.defvjp(f_fwd, f_bwd)
  return f(lhs, rhs)
