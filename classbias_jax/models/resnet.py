"""Flax ResNets: CIFAR ResNet-8/20/32/56 (He et al. 2016, sec. 4.2), ResNet-18 with a CIFAR
stem, ResNet-50 with the ImageNet stem, and a tiny model for tests.

`ResNet` here is the plain model, written as the google/flax examples write one (flax
`nn.Conv` and `nn.BatchNorm` on whole batches). models/cpu.py holds the same networks
tuned for XLA:CPU, with the same parameter tree (names, shapes, initialisation), so states
and checkpoints move between the two; `models.create_model` picks one by backend.

Initialisation and BatchNorm follow torchvision (Kaiming-normal fan-out convs, BN momentum
0.1 in PyTorch's convention = 0.9 here, eps 1e-5), so results are comparable with
PyTorch recipes. Compute in `dtype`; parameters and BN statistics float32; logits float32.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from classbias_jax.errors import ConfigError

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Ops(NamedTuple):
  """How the blocks combine activations: whole arrays here; models/cpu.py passes the same
  ops on lists of batch chunks."""
  relu: Callable
  add: Callable
  pad_shortcut: Callable  # (x, strides, extra channels) -> strided x, zero-padded channels
  channels: Callable  # x -> its number of channels


def _pad_shortcut(x, strides, extra):
  return jnp.pad(x[:, ::strides, ::strides, :],
                 ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


WHOLE = Ops(nn.relu, operator.add, _pad_shortcut, lambda x: x.shape[-1])


class BasicBlock(nn.Module):
  """Two 3x3 convs. shortcut 'pad': option A of He et al. (strided identity, zero-padded
  channels, no parameters); 'conv': 1x1 projection when the shape changes."""
  filters: int
  strides: int
  shortcut: str
  conv: Any
  norm: Any
  ops: Ops = WHOLE

  @nn.compact
  def __call__(self, x):
    relu = self.ops.relu
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters, (3, 3))(y))
    return relu(self.ops.add(y, _shortcut(self, x, self.filters)))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion, as torchvision's ResNet-50 (v1.5)."""
  filters: int
  strides: int
  shortcut: str
  conv: Any
  norm: Any
  ops: Ops = WHOLE

  @nn.compact
  def __call__(self, x):
    relu = self.ops.relu
    y = relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = relu(self.norm()(self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)))
    y = self.norm()(self.conv(self.filters * 4, (1, 1))(y))
    return relu(self.ops.add(y, _shortcut(self, x, self.filters * 4)))


def _shortcut(block, x, filters):
  """The block's residual path: x itself, option A's padded identity, or a projection."""
  strides, channels = block.strides, block.ops.channels(x)
  if channels == filters and strides == 1:
    return x
  if block.shortcut == 'pad':
    return block.ops.pad_shortcut(x, strides, filters - channels)
  return block.norm()(block.conv(filters, (1, 1), (strides, strides))(x))


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNet(nn.Module):
  """Generic ResNet. Input float [B, H, W, C]; output logits float32 [B, num_classes]."""
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  num_classes: int
  block: str = 'basic'  # a key of BLOCKS
  stem: str = 'cifar'  # 'cifar': 3x3 stride 1; 'imagenet': 7x7 stride 2 + 3x3 max pool
  shortcut: str = 'conv'
  dtype: Any = jnp.float32  # compute dtype; parameters and BN statistics stay float32
  # The convolution nn.Conv calls (None: lax.conv_general_dilated); create_model passes
  # models/conv.py's, whose weight gradient stays fast under vmap over models.
  conv_general_dilated: Callable | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init,
                             dtype=self.dtype, conv_general_dilated=self.conv_general_dilated)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = nn.relu(norm()(conv(self.widths[0], (7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.relu(norm()(conv(self.widths[0], (3, 3))(x)))
    for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = BLOCKS[self.block](width, strides, self.shortcut, conv, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def _cifar(n):
  return dict(stage_sizes=(n, n, n), widths=(16, 32, 64), stem='cifar', shortcut='pad')


MODELS = {
    'tiny': dict(stage_sizes=(1, 1), widths=(8, 16), stem='cifar', shortcut='pad'),
    'resnet8': _cifar(1),
    'resnet20': _cifar(3),
    'resnet32': _cifar(5),
    'resnet56': _cifar(9),
    'resnet18': dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem='cifar'),
    'resnet50': dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem='imagenet',
                     block='bottleneck'),
}


def model_spec(name: str, width: float = 1.0) -> dict:
  """MODELS[name] with every stage width multiplied by `width` (at least 1 channel)."""
  if name not in MODELS:
    raise ConfigError(f'unknown model.name {name!r}; choose one of {", ".join(MODELS)}')
  spec = dict(MODELS[name])
  spec['widths'] = tuple(max(1, int(round(w * width))) for w in spec['widths'])
  return spec
