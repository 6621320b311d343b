r"""Label-smoothing study: how smoothing the targets changes the accuracy of each class.

Each image's target is optax.smooth_labels's (1 - a) one_hot + a / C (a per-class table
of a is allowed: `class_knobs.label_smoothing`), with a swept (`loss.label_smoothing`);
a = 0 is the plain cross-entropy, the reference the report compares against.

Real study: ImageNet's recipe uses a = 0.1 (Szegedy et al. 2016; Mueller et al. 2019
study what it does to the penultimate layer). On CIFAR-100, CIFAR ResNet-18, 5 values x 8
seeds = 40 models, 200 epochs, SGD 0.1 momentum 0.9 cosine, wd 5e-4, pad-4 crop + flip,
bfloat16:

  python -m classbias_jax.main --config=configs/smooth.py --workdir=runs/smooth_cifar100

Needs CIFAR-100 prepared for TFDS in `data.data_dir` (see README, "Datasets"). Runtime
not measured (about 3 hours on one H100 at docs/benchmarks.md's 2,860 model-epochs per
hour for CIFAR ResNet-18s in bf16). The seed count is this project's default (8).

Offline on CPU in a few minutes (the planted dataset at 16x16, 200 training images per
class, ResNet-8 at half width, 3 values x 4 seeds, 12 epochs; 1.8 minutes of training
measured on two CPU cores shared with other jobs, 2026-12-06):

  python -m classbias_jax.main --config=configs/smooth.py:runlocal --workdir=runs/smooth
  python -m classbias_jax.report --workdir=runs/smooth

What the planted data should show: the planted set has no class family built for label
smoothing. A uniform a changes every target by the same affine map, (1 - a) p + a / C, so
the class a model should predict for an image (the most probable one) is the same with
or without it; what changes is the confidence it is trained to, the same for every class.
A per-class difference here comes from training, not from the labels. Measured
(`runlocal`, 4 seeds): mean accuracy 98.0% at a = 0, 100.0% at 0.1, 99.9% at 0.3, and
the report flags no class (smallest q 1.0); at a = 0 one seed learns the crop- markers
only in part (crop-plain 54.5%), which 4 seeds cannot tell from chance. (A per-class table does move decisions: a class smoothed more than its
neighbour loses the images the two share.)

Args: runlocal, seeds=N, epochs=N (0 = the study's default).
"""
from classbias_jax import configs


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, seeds=0, epochs=0)
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
  c.sweep.name = 'loss.label_smoothing'
  c.sweep['values'] = (0.0, 0.05, 0.1, 0.2, 0.3)

  if args.runlocal:
    c.seeds = args.seeds or 4  # flags need >= 4 seeds
    c.data.name = 'planted'
    c.data.planted_train_per_class = 200
    c.data.planted_rare = 20  # none-rings and none-dots: 20 training images each
    c.data.image_size = 16
    c.model.name = 'resnet8'
    c.model.width = 0.5
    c.model.dtype = 'float32'
    c.sweep['values'] = (0.0, 0.1, 0.3)
    c.train.epochs = args.epochs or 12
    c.train.batch_size = 64
    c.train.eval_every = 0
    c.aug.pad_crop = 0
    c.aug.flip_prob = 0.5
  return c
