"""PyTorch reference: one SGD training step of the same ResNets as classbias_jax.models.

Same architectures (CIFAR ResNet-8/20/32/56 with option-A shortcuts, ResNet-18 with a CIFAR
stem and 1x1 projections, the test-only 'tiny'), same loss (softmax cross-entropy), same
optimiser (SGD, momentum 0.9, coupled weight decay 5e-4) and the same on-the-fly
augmentation as a study (zero-pad 4 + random crop, horizontal flip, per image, on the
batch tensor), run eagerly. classbias_jax.benchmark imports it when torch is installed;
torch is not a dependency of the package.

  python benchmarks/torch_resnet.py --model=resnet20 --batch=128 --threads=2
  python benchmarks/torch_resnet.py --model=resnet20 --batch=128 --device=cuda
  python benchmarks/torch_resnet.py --smoke   # tiny, CPU, seconds: tests/test_gpu_scripts.py

prints one JSON line: model, batch, threads, step_s (median), images_per_s. With --serve
it reads a number k per line on stdin, runs k steps and answers one JSON line
{"wall_s": [...], "cpu_s": ...}: classbias_jax.benchmark drives it that way, interleaved
with its own measurements, in a process of its own so the two thread pools never share
one process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

CIFAR = {'resnet8': 1, 'resnet20': 3, 'resnet32': 5, 'resnet56': 9}


class BasicBlock(nn.Module):
  """Two 3x3 convs + BN; shortcut 'pad' (strided identity, zero channels) or 'conv'."""

  def __init__(self, cin, cout, stride, shortcut):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.extra = stride, cout - cin
    self.project = None
    if (stride != 1 or cin != cout) and shortcut == 'conv':
      self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.project is not None:
      x = self.project(x)
    elif self.stride != 1 or self.extra:
      x = x[:, :, ::self.stride, ::self.stride]
      x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(y + x)


class ResNet(nn.Module):
  """CIFAR-stem ResNet (3x3 stride-1 stem), global average pool, linear head."""

  def __init__(self, stage_sizes, widths, num_classes, shortcut, in_channels=3):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU())
    blocks, cin = [], widths[0]
    for stage, (n, width) in enumerate(zip(stage_sizes, widths)):
      for b in range(n):
        blocks.append(BasicBlock(cin, width, 2 if stage > 0 and b == 0 else 1, shortcut))
        cin = width
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def create(name: str, num_classes: int = 10) -> ResNet:
  if name in CIFAR:
    return ResNet((CIFAR[name],) * 3, (16, 32, 64), num_classes, 'pad')
  if name == 'resnet18':
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, 'conv')
  if name == 'tiny':
    return ResNet((1, 1), (8, 16), num_classes, 'pad')
  raise ValueError(f'no PyTorch reference for {name!r}')


def augment(x, padding: int = 4):
  """[B, C, H, W] -> [B, C, H, W]: RandomCrop(H, padding) + RandomHorizontalFlip, per image."""
  b, c, h, w = x.shape
  dev = x.device
  padded = F.pad(x, (padding,) * 4)
  top = torch.randint(0, 2 * padding + 1, (b, 1, 1, 1), device=dev)
  left = torch.randint(0, 2 * padding + 1, (b, 1, 1, 1), device=dev)
  rows = top + torch.arange(h, device=dev).view(1, 1, h, 1)
  cols = left + torch.arange(w, device=dev).view(1, 1, 1, w)
  x = padded[torch.arange(b, device=dev).view(b, 1, 1, 1),
             torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
  flip = torch.rand(b, 1, 1, 1, device=dev) < 0.5
  return torch.where(flip, x.flip(3), x)


def make_step(model, augment_on: bool = True):
  """One SGD step on a uint8 batch [B, H, W, C]: normalise, augment, fwd, bwd, update."""
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

  def step(images, labels):
    x = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.25)
    if augment_on:
      x = augment(x)
    loss = F.cross_entropy(model(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  return step


def time_steps(step, images, labels, steps: int) -> list[float]:
  """Seconds of each of `steps` calls (reading the loss back waits for the step, on a GPU
  too)."""
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step(images, labels).item()
    times.append(time.perf_counter() - t0)
  return times


def setup(model_name: str, batch: int, image_size: int = 32, channels: int = 3,
          num_classes: int = 10, threads: int = 0, augment_on: bool = True, seed: int = 0,
          device: str = 'cpu'):
  """(step, images, labels) ready to time; `threads` > 0 sets torch's intra-op threads."""
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  model = create(model_name, num_classes).train()
  if channels != 3:
    model.stem[0] = nn.Conv2d(channels, model.stem[0].out_channels, 3, 1, 1, bias=False)
  model = model.to(device)
  if device.startswith('cuda'):
    torch.backends.cudnn.benchmark = True  # what a tuned PyTorch script sets
  images = torch.randint(0, 256, (batch, image_size, image_size, channels), dtype=torch.uint8)
  labels = torch.randint(0, num_classes, (batch,))
  return make_step(model, augment_on), images.to(device), labels.to(device)


def serve(step, images, labels) -> None:
  """Runs k steps for each line k on stdin; answers wall seconds per step and CPU seconds."""
  import sys
  print(json.dumps({'ready': True, 'threads': torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    start = time.process_time()
    wall = time_steps(step, images, labels, int(line))
    print(json.dumps({'wall_s': wall, 'cpu_s': time.process_time() - start}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--image-size', type=int, default=32)
  parser.add_argument('--threads', type=int, default=0)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--augment', choices=('on', 'off'), default='on')
  parser.add_argument('--num-classes', type=int, default=10)
  parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
  parser.add_argument('--serve', action='store_true')
  parser.add_argument('--smoke', action='store_true',
                      help='the same steps at tiny sizes on the CPU: the test model, batch 8, '
                      '8x8 images, 2 timed steps (overrides those flags)')
  args = parser.parse_args()
  if args.smoke:
    args.model, args.batch, args.image_size, args.steps, args.device = 'tiny', 8, 8, 2, 'cpu'
  step, images, labels = setup(args.model, args.batch, args.image_size, threads=args.threads,
                               num_classes=args.num_classes, augment_on=args.augment == 'on',
                               device=args.device)
  if args.serve:
    return serve(step, images, labels)
  time_steps(step, images, labels, 3)  # warm-up: allocator, oneDNN primitive caches
  step_s = statistics.median(time_steps(step, images, labels, args.steps))
  print(json.dumps({'model': args.model, 'batch': args.batch, 'threads': torch.get_num_threads(),
                    'step_s': step_s, 'images_per_s': args.batch / step_s}))


if __name__ == '__main__':
  main()
