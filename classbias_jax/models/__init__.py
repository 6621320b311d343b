"""Models selected by `model.name` (see resnet.MODELS), in one of two implementations of
the same networks with the same parameter tree, picked by the backend:

- XLA:CPU: models/cpu.py's ResNet (batch chunks of 32, weight-gradient operands computed
  once), which trains faster there;
- GPU, TPU: models/resnet.py's plain ResNet with models/conv.py's convolution, whose weight
  gradient under vmap over models is M ordinary convolutions rather than one batch-grouped
  convolution (slow in cuDNN).

The measurements behind both are in docs/benchmarks.md.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from classbias_jax.models import cpu, resnet
from classbias_jax.models.conv import conv_general_dilated
from classbias_jax.models.resnet import MODELS

__all__ = ['MODELS', 'create_model']


def create_model(name: str, num_classes: int, width: float = 1.0, dtype: Any = jnp.float32,
                 backend: str | None = None) -> nn.Module:
  """The model `name` with every stage width multiplied by `width` (at least 1 channel),
  for `backend` (default: jax.default_backend())."""
  spec = resnet.model_spec(name, width)
  # CPU: the chunked model tuned for XLA:CPU; elsewhere the plain one with per-model weight
  # gradients under vmap (module docstring, docs/benchmarks.md).
  if (backend or jax.default_backend()) == 'cpu':
    return cpu.ResNet(num_classes=num_classes, dtype=dtype, **spec)
  return resnet.ResNet(num_classes=num_classes, dtype=dtype,
                       conv_general_dilated=conv_general_dilated, **spec)
