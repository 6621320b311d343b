r"""Mixup / CutMix study: how the mixing strength alpha changes the accuracy of each class.

timm's Mixup in batch mode (classbias_jax/mix.py): every batch is mixed with its reverse,
lambda ~ Beta(alpha, alpha), soft targets mixed with the same lambda. The sweep is Mixup's
alpha (`aug.mixup_alpha`); the arg `cutmix` sweeps CutMix's (`aug.cutmix_alpha`) instead.
alpha 0 is the unmixed recipe, the reference the report compares against.

Real study, after Lee et al. 2023 ("The Effects of Mixed Sample Data Augmentation are
Class Dependent": Mixup and CutMix on CIFAR-100 and ImageNet; they count the classes
mixing degrades): CIFAR-100, CIFAR ResNet-18, 5 alphas x 8 seeds = 40 models, 200 epochs,
SGD 0.1 momentum 0.9 cosine, wd 5e-4, pad-4 crop + flip under the mixing, bfloat16:

  python -m classbias_jax.main --config=configs/mixup.py --workdir=runs/mixup_cifar100
  python -m classbias_jax.main --config=configs/mixup.py:cutmix --workdir=runs/cutmix_cifar100

Needs CIFAR-100 prepared for TFDS in `data.data_dir` (see README, "Datasets"). Runtime
not measured: 40 x 200 = 8,000 model-epochs, about 3 hours on one H100 at the 2,860
model-epochs per hour measured for CIFAR ResNet-18s in bf16 (docs/benchmarks.md). The
seed count is this project's default (8), not restated from the paper. Expected result,
following Lee et al.: mean accuracy rises with mixing while a share of the classes
loses accuracy against alpha 0; the report names them.

Offline on CPU in a few minutes (the planted dataset at 16x16, 200 training images per
class, ResNet-8 at half width, 3 alphas x 4 seeds, 12 epochs):

  python -m classbias_jax.main --config=configs/mixup.py:runlocal --workdir=runs/mixup
  python -m classbias_jax.report --workdir=runs/mixup

What the planted data should show (data/planted.py, not yet measured at these settings):
Mixup blends the color- classes' aligned stripes, so a red and a yellow disc mixed half
and half look orange while their target says "half red, half yellow, no orange": the
color- classes, color-orange first, are the ones built to be hurt. CutMix pastes a box
that covers a corner in many batches, so a crop- image may show another class's corner
marker or lose its own while its target gives the marker's class only the box's share of
the area: the crop- classes are built to be hurt by CutMix.

Args: runlocal, cutmix, seeds=N, epochs=N (0 = the study's default).
"""
from classbias_jax import configs


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, cutmix=False, seeds=0, epochs=0)
  c = configs.base_config()
  c.seeds = args.seeds or 8
  c.data.name = 'cifar100'
  c.model.name = 'resnet18'
  c.model.dtype = 'bfloat16'
  c.train.epochs = args.epochs or 200
  c.train.batch_size = 128
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.aug.pad_crop = 4
  c.aug.flip_prob = 0.5
  c.aug.mix_prob = 1.0
  c.sweep.name = 'aug.cutmix_alpha' if args.cutmix else 'aug.mixup_alpha'
  c.sweep['values'] = (0.0, 0.2, 0.5, 1.0, 2.0)

  if args.runlocal:
    c.seeds = args.seeds or 4  # flags need >= 4 seeds
    c.data.name = 'planted'
    c.data.planted_train_per_class = 200
    c.data.image_size = 16  # 4x fewer pixels than the 32x32 drawing; effects intact
    c.model.name = 'resnet8'
    c.model.width = 0.5
    c.model.dtype = 'float32'
    c.sweep['values'] = (0.0, 0.4, 1.0)
    c.train.epochs = args.epochs or 12
    c.train.batch_size = 64
    c.train.eval_every = 0
    c.aug.pad_crop = 0  # the planted markers sit on the edge; padding would move them off
    c.aug.flip_prob = 0.5
  return c
