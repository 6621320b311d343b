r"""Colour-jitter study: how ColorJitter's strength changes the accuracy of each class.

Strength s means ColorJitter(brightness=0.8s, contrast=0.8s, saturation=0.8s, hue=0.2s),
the SimCLR parametrisation; s = 0 is no jitter.

Real study (CIFAR-100, CIFAR ResNet-18, 5 strengths x 8 seeds = 40 models, 30 epochs,
SGD 0.1 momentum 0.9 cosine, wd 5e-4, pad-4 crop + flip under the jitter, bfloat16):

  python -m classbias_jax.main --config=configs/color.py --workdir=runs/color_cifar100

Needs CIFAR-100 prepared for TFDS in `data.data_dir` (see README, "Datasets"). Expected
runtime: about 45 minutes on one H100-class GPU (an estimate scaled from configs/wd.py's
FLOP count; not yet measured). Expected result: mean accuracy changes little, while
classes told apart mostly by colour (apple, orange, pear, sweet pepper, the flowers) lose
several points at s = 1 against s = 0; the report names them.

Offline on CPU in a few minutes (the planted dataset at 16x16, 200 training images per
class, ResNet-8 at half width, 5 x 8 models, 12 epochs; 2.5 minutes measured on two
lightly loaded cores, and 5.4 minutes on a slower day when the 2-seed version took 2.1):

  python -m classbias_jax.main --config=configs/color.py:runlocal --workdir=runs/color
  python -m classbias_jax.report --workdir=runs/color

Expected: the three `color-` classes, told apart only by hue, fall from 100% to 48-64% at
s = 1 (color-orange 48%, color-yellow 51%, color-red 64%; confused with each other) and to
54-80% at s = 0.75, while the `none-` classes stay within 1 point of 100% and the `crop-`
classes within 1 point but for crop-plain at s = 1 (90% over seeds: two seeds of eight
learn its markers less well, which the test rightly does not flag).
The report flags exactly the three `color-` classes as hurt at s = 1 and at s = 0.75,
`color-orange` alone at s = 0.5 (about 5 points: the pooled run-to-run variance of
docs/statistics.md finds it), nothing at s = 0, and no other class anywhere. Beyond
the shift shared by all classes (about 0 here: the median class does not move) exactly the three `color-` classes are hurt at s = 1, no class is helped at
any strength, and the spread between classes peaks at full strength: in the run kept in
tests/data/color_runlocal, tau 0 at s = 0, 1.7 points at 0.5, 16.0 at 0.75 and 21.2
(14.2-39.4) at 1 against the reference 0.25 (tests/test_dependence.py). With
`seeds=2` it trains in a quarter of the time but can flag nothing
(its report says why): two runs per value cannot separate a knob's effect from the
run-to-run shifts of a class.
`runlocal,shortcut` is the sweep a fix starts from (configs/fix.py): the planted data
where in training each none- class also has a frame of its own hue and in validation and
test another's (`data.planted_shortcut='frame'`), strengths 0 and 1 x 8 seeds, 10 epochs,
50 validation images per class. Expected: strength 1 is the best uniform value on
validation (without jitter the models learn the frames), and `python -m
classbias_jax.fix` turns the jitter off for exactly the three color- classes (gains of
29-58 points, q <= 0.005); in the fix study that raises the mean by about 16 points, the
worst class by about 67 and the three classes to 100% (docs/studies.md has the arms and
their intervals, 2026-12-06).

Args: runlocal, shortcut (with runlocal), seeds=N, epochs=N (0 = the study's default).
"""
from classbias_jax import configs


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, seeds=0, epochs=0, shortcut=False)
  c = configs.base_config()
  c.seeds = args.seeds or 8
  c.data.name = 'cifar100'
  c.model.name = 'resnet18'
  c.model.dtype = 'bfloat16'
  c.sweep.name = 'aug.color_strength'
  c.sweep['values'] = (0.0, 0.25, 0.5, 0.75, 1.0)
  c.train.epochs = args.epochs or 30
  c.train.batch_size = 128
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.aug.pad_crop = 4
  c.aug.flip_prob = 0.5

  if args.runlocal:
    configs.planted_runlocal(c, args, seeds=8, epochs=12)
    c.aug.pad_crop = 0  # the planted effect is the jitter's alone
    c.aug.flip_prob = 0.0
  if args.shortcut:  # the sweep a fix study starts from (configs/fix.py)
    # jitter helps the none- classes (their frames); the crop- markers are drawn large
    # there, so every seed learns them in 10 epochs (planted.load)
    configs.shortcut_sweep(c, 'color', args, 'frame', (0.0, 1.0), epochs=10)

  return c
