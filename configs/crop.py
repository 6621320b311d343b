r"""Random-resized-crop study: how the crop's lower scale changes the accuracy of each class.

RandomResizedCrop(scale=(s, 1), ratio=(3/4, 4/3)) back to the input size, with s swept
from torchvision's default 0.08 (crops of 8% of the image) to 1.0 (no crop). A random
horizontal flip is on, as in Balestriero et al. 2022; it is a confound of the original
study (it changes classes that differ by handedness), so `noflip` switches it off
(the same as --config.aug.flip_prob=0).

Real study (CIFAR-100, CIFAR ResNet-18, 6 scales x 8 seeds = 48 models, 30 epochs,
SGD 0.1 momentum 0.9 cosine, wd 5e-4, bfloat16 compute):

  python -m classbias_jax.main --config=configs/crop.py --workdir=runs/crop_cifar100

Needs CIFAR-100 prepared for TFDS in `data.data_dir` (see README, "Datasets"). Expected
runtime: about 50 minutes on one H100-class GPU (an estimate scaled from configs/wd.py's
FLOP count; not yet measured). Expected result, following Balestriero et al. 2022: mean
accuracy is best at a moderate scale (0.2-0.6), while classes recognised by a small part
or by context lose several points at 0.08 against 1.0; the report names them.

Offline on CPU in a few minutes (the planted dataset at 16x16, 200 training images per
class, ResNet-8 at half width, scales 0.08, 0.4, 0.8, 1 x 8 seeds, 15 epochs; 7.9 minutes
measured on two cores shared with a test run, on the slower day of configs/color.py's
figures):

  python -m classbias_jax.main --config=configs/crop.py:runlocal --workdir=runs/crop
  python -m classbias_jax.report --workdir=runs/crop

Expected: the three `crop-` classes, told apart only by one-pixel markers in the image's
corners, fall from 100% at scale 1 to 32-44% at 0.08 (chance among the three is 33%: most
crops cut the corners out) and to 43-79% at 0.8, while the `none-` and `color-` classes
lose 0-3 points. The report flags all three `crop-` classes as hurt at 0.08 and 0.4
(49-68 points, q <= 0.005), `crop-plain` and `crop-top` at 0.8, and two small real effects
of the smallest crops at 0.08: `color-orange` (3.1 points, q = 0.04) and `none-vlines`
(1.6 points, q = 0.02). Beyond the shift shared by all classes (-2.2 points at 0.08,
about 0 elsewhere) the same `crop-` classes are hurt, and at 0.08 `color-red`, which
stays at 100%, counts as helped (+1.8 points): the shift is that of the classes below
their ceiling. The spread between classes is 27, 26 and 18 points at 0.08, 0.4 and 0.8.

`runlocal,shortcut` is the sweep a fix starts from (configs/fix.py): the planted data
with none-hlines and none-vlines seen twice as close in validation and test
(`data.planted_shortcut='zoom'`), scales 0.1 and 1 x 8 seeds, 10 epochs, 50 validation
images per class. Expected: no crop is the best uniform value on validation, and
`python -m classbias_jax.fix` crops exactly the two line classes (gains of about 50
points, q <= 0.008); the fix study's policy arm lifts the worst class from ~36% to
~99.8% (docs/studies.md, 2026-12-06). Sweep and fix together: about 4 minutes on two
cores.

Real images on two CPU cores (Fashion-MNIST from Debian's dataset-fashion-mnist, 6k
stratified training images, the full 10k test set, ResNet-8 at half width, scales 0.08,
0.25, 0.5, 1.0 x 4 seeds, 8 epochs, flip on; 11 minutes on two cores, 2026-12-06;
results in docs/studies.md):

  python -m classbias_jax.main --config=configs/crop.py:fashion --workdir=runs/crop_fashion

Args: runlocal, fashion, noflip, shortcut (with runlocal), seeds=N, epochs=N (0 = the
study's default).
"""
from classbias_jax import configs


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, fashion=False, noflip=False, seeds=0,
                          epochs=0, shortcut=False)
  c = configs.base_config()
  c.seeds = args.seeds or 8
  c.data.name = 'cifar100'
  c.model.name = 'resnet18'
  c.model.dtype = 'bfloat16'
  c.sweep.name = 'aug.crop_scale_min'
  c.sweep['values'] = (0.08, 0.2, 0.4, 0.6, 0.8, 1.0)
  c.train.epochs = args.epochs or 30
  c.train.batch_size = 128
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.aug.crop_scale_max = 1.0
  c.aug.crop_ratio_min = 3 / 4
  c.aug.crop_ratio_max = 4 / 3
  c.aug.flip_prob = 0.0 if args.noflip else 0.5

  if args.runlocal:
    # 15 epochs: the corner markers at scale 1 need them all
    configs.planted_runlocal(c, args, seeds=8, epochs=15)
    c.sweep['values'] = (0.08, 0.4, 0.8, 1.0)  # 4 scales x 8 seeds fit three minutes

  if args.shortcut:  # the sweep a fix study starts from (configs/fix.py)
    # crops help two none- classes
    configs.shortcut_sweep(c, 'crop', args, 'zoom', (0.1, 1.0), epochs=10)

  if args.fashion:  # real images on two CPU cores; see the docstring
    configs.fashion_local(c, args, epochs=8)
    c.sweep['values'] = (0.08, 0.25, 0.5, 1.0)
    c.train.batch_size = 128
  return c
