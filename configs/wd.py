r"""Weight decay study: how the L2 penalty changes the accuracy of each class.

Real study (CIFAR-100, CIFAR ResNet-18, 7 decay values x 8 seeds = 56 models, 30 epochs,
SGD 0.1 momentum 0.9 cosine, pad-4 crop + flip, bfloat16 compute):

  python -m classbias_jax.main --config=configs/wd.py --workdir=runs/wd_cifar100

Needs CIFAR-100 prepared for TFDS in `data.data_dir` (see README, "Datasets"). Expected
runtime: 35-45 minutes on one H100 (56 x 30 = 1,680 model-epochs at the 2,860
model-epochs per hour measured for 8 CIFAR ResNet-18s in bf16, docs/benchmarks.md, plus
evaluation and compilation; the 56-model run itself is not yet measured). Expected
result, following Balestriero et al. 2022: mean accuracy peaks near wd 5e-4 while a few
classes lose 10+ points against wd 0 or 1e-4; the report names them.

Offline on CPU in about two to three minutes (scikit-learn's digits, ResNet-8, 5 x 4
models, 15 epochs, the CPU rule's strategy 'sequential'; 143 s measured on two quiet cores,
on a day they ran the 2-seed version in 85 s):

  python -m classbias_jax.main --config=configs/wd.py:runlocal --workdir=runs/wd
  python -m classbias_jax.report --workdir=runs/wd

Expected: 98.4-98.8% mean accuracy from wd 0 to 0.15; at 0.2 training breaks down
unevenly (56% mean): digits 0, 2 and 6 stay at 96-100% in every run, 8 falls to 0% in
every run, and 1, 3, 4, 5, 7 and 9 collapse in some runs only. The report flags 8 as hurt
at 0.2 (-98 points, q < 1e-15) and nothing elsewhere: a class that falls in some runs
only is, with 4 seeds, not told apart from run-to-run chance; nor is any class hurt beyond
the shift shared by all classes at 0.2 (-50 points, -98 to -1), whose own uncertainty is
as large as the collapse, while the spread between classes there is 33 (22-61) points.
Which classes fall at 0.2 is sensitive to the order of floating-point sums (another
strategy, backend or JAX version can pick others); a given strategy and installation give
the same numbers every run.

Real images on two CPU cores (Fashion-MNIST from Debian's dataset-fashion-mnist, 10k
stratified training images, the full 10k test set, ResNet-8 at half width, 4 decay values
x 4 seeds, 12 epochs, pad-2 crop + flip). Measured 2026-12-06: 2,651 CPU-seconds (25
minutes on two cores shared with other jobs), best mean accuracy 85.1% at 5e-3, and at
5e-2 Coat, Shirt and T-shirt/top collapse into Pullover and Dress into Trouser, flagged
with Ankle boot (docs/studies.md):

  python -m classbias_jax.main --config=configs/wd.py:fashion --workdir=runs/wd_fashion

The same study at full size on one GPU (all 60,000 training images, CIFAR ResNet-20 at full
width, bfloat16 compute, 4 decay values x 4 seeds, 15 epochs): estimated 3-5 minutes on
one H100 from the 16-model ResNet-20 step measured there before the redesign (25-48 ms
per step, 469 steps per epoch); the run itself, and whether 15 epochs reach the >= 93%
mean accuracy of published ResNets at the best value, await a device
(benchmarks/gpu_sweep.sh runs it):

  python -m classbias_jax.main --config=configs/wd.py:fashion,full --workdir=runs/wd_fashion_full

Args: runlocal, fashion, full (with fashion), seeds=N, epochs=N.
"""
from classbias_jax import configs
from classbias_jax.errors import ConfigError


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, fashion=False, full=False, seeds=8,
                           epochs=30)
  if args.full and not args.fashion:
    raise ConfigError("config arg 'full' is the full Fashion-MNIST study: give it with "
                      "'fashion' (configs/wd.py:fashion,full)")
  given = lambda key: f'{key}=' in (arg or '')
  c = configs.base_config()
  c.seeds = args.seeds
  c.data.name = 'cifar100'
  c.model.name = 'resnet18'
  c.model.dtype = 'bfloat16'
  c.sweep.name = 'optim.weight_decay'
  c.sweep['values'] = (0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3)
  c.train.epochs = args.epochs
  c.train.batch_size = 128
  c.optim.learning_rate = 0.1
  c.aug.pad_crop = 4
  c.aug.flip_prob = 0.5

  if args.runlocal:
    c.seeds = args.seeds if given('seeds') else 4  # flags need >= 4 seeds
    c.data.name = 'digits'
    c.model.name = 'resnet8'
    c.model.dtype = 'float32'
    c.sweep['values'] = (0.0, 0.05, 0.1, 0.15, 0.2)
    c.train.epochs = args.epochs if given('epochs') else 15
    c.train.batch_size = 64
    c.train.eval_every = 1
    c.aug.pad_crop = 0
    c.aug.flip_prob = 0.0  # a mirrored digit is another digit

  if args.fashion:
    c.seeds = args.seeds if given('seeds') else 4
    c.data.name = 'fashion_mnist'
    c.data.train_subset = 10000
    c.model.name = 'resnet8'
    c.model.width = 0.5  # 8/16/32 channels, so 16 models x 12 epochs fit two CPU cores
    c.model.dtype = 'float32'
    c.sweep['values'] = (0.0, 5e-4, 5e-3, 5e-2)
    c.train.epochs = args.epochs if given('epochs') else 12
    c.train.eval_every = 3
    c.aug.pad_crop = 2
    c.aug.flip_prob = 0.5

  if args.full:
    c.data.train_subset = 0  # all 60,000 training images
    c.model.name = 'resnet20'
    c.model.width = 1.0
    c.model.dtype = 'bfloat16'
    c.train.epochs = args.epochs if given('epochs') else 15
    c.train.eval_every = 5
  return c
