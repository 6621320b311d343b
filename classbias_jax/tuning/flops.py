"""FLOP counts of a training step: model FLOPs from the jaxpr (the same number on every
backend) and XLA's cost analysis of a compiled program."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def model_flops(model, image_shape, batch_size: int) -> float:
  """Training FLOPs of one step of one model: 3x the forward pass's convolution and matmul
  FLOPs (the backward pass does twice the forward's work), 2 per multiply-add, counting
  only window taps that fall inside the input (padding excluded), as model FLOPs are
  usually counted. The same number on every backend, where XLA's cost analysis of a GPU
  program leaves out the cuDNN convolutions."""
  shape = (batch_size,) + tuple(image_shape)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape),
                                                train=False))
  forward = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  jaxpr = jax.make_jaxpr(forward)(variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  return 3 * _jaxpr_flops(jaxpr.jaxpr)


def _valid_taps(in_size: int, out_size: int, window: int, stride: int, pad_lo: int,
                lhs_dilation: int, rhs_dilation: int) -> int:
  """(output position, window tap) pairs of one spatial dimension that read an input
  element, not padding."""
  pos = (np.arange(out_size)[:, None] * stride - pad_lo
         + np.arange(window)[None, :] * rhs_dilation)
  return int(np.sum((pos >= 0) & (pos % lhs_dilation == 0)
                    & (pos // lhs_dilation < in_size)))


def _jaxpr_flops(jaxpr) -> float:
  """Convolution and matmul FLOPs of a jaxpr (sub-jaxprs included; a scan's body counts
  `length` times, a cond its costliest branch, a while loop's body once)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      lhs_spec, rhs_spec, out_spec = eqn.params['dimension_numbers']
      p = eqn.params
      taps = 1
      for i in range(len(rhs_spec) - 2):
        taps *= _valid_taps(lhs[lhs_spec[2 + i]], out[out_spec[2 + i]], rhs[rhs_spec[2 + i]],
                            p['window_strides'][i], p['padding'][i][0],
                            (p['lhs_dilation'] or (1,) * 3)[i],
                            (p['rhs_dilation'] or (1,) * 3)[i])
      total += 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * taps
    elif name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
    elif name == 'cond':
      total += max(_jaxpr_flops(b.jaxpr) for b in eqn.params['branches'])
    else:
      inner = sum(_jaxpr_flops(getattr(v, 'jaxpr', v)) for v in eqn.params.values()
                  if isinstance(v, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)))
      total += inner * (eqn.params['length'] if name == 'scan' else 1)
  return float(total)


def step_flops(compiled) -> float:
  """FLOPs of one call of a compiled (or lowered) function by XLA's cost analysis (0 when
  unknown)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return 0.0
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))
