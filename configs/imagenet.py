r"""ImageNet study of Balestriero, Bottou & LeCun 2022: how the random-resized-crop scale (or
weight decay) changes the accuracy of each of the 1000 classes of a ResNet-50.

The crop study (default): RandomResizedCrop(scale=(s, 1), ratio=(3/4, 4/3)) to 224x224 and
a horizontal flip with probability 0.5, s in (0.08, 0.2, 0.4, 0.6, 0.8, 1.0) x 20 seeds =
120 ResNet-50s (the paper trains 20 runs per crop setting). `wd`: the weight-decay study,
wd in (0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3) x 10 seeds = 60 models (10 runs per setting in
the paper), crop at its standard scale 0.08.

Recipe: the standard ImageNet ResNet-50 one (Goyal et al. 2017; torchvision's reference):
SGD momentum 0.9, learning rate 0.1 per 256 images (batch 256: 0.1; `batch=N` sets the
batch and scales the rate), weight decay 1e-4 as an L2 term on every parameter, 90
epochs, 5 warm-up epochs then cosine decay to 0, bfloat16 compute, float32 parameters.
The paper's text is not restated here (it trains a standard ResNet-50 recipe; its exact
epoch count is not checked against it): pass `epochs=N` to match another schedule.
Images are decoded and resized on the host (`data.input_mode='streamed'`, 8 grain worker
processes: `--config.data.workers=N` for another count); every model of the sweep draws
its own crop of each image on the device. Evaluation on the 50,000 validation images.

Two ways to read ImageNet, both offline:

  TFDS (`imagenet2012` prepared as array_record in data.data_dir; its 'validation' split
  is the test split, as the dataset has no 'test'):

    python -m classbias_jax.main --config=configs/imagenet.py \
        --config.data.data_dir=/data/tensorflow_datasets --workdir=runs/imagenet_crop

  The class-folder layout PATH/train/<wnid>/*.JPEG + PATH/val/<wnid>/*.JPEG (val sorted
  into class folders, e.g. by the usual valprep.sh; a val/ of loose files is an error):

    python -m classbias_jax.main --config=configs/imagenet.py:folder=/data/imagenet \
        --workdir=runs/imagenet_crop
    # the same: --config=configs/imagenet.py --config.data.name=folder:/data/imagenet

  Weight decay: `--config=configs/imagenet.py:wd` (with `,folder=PATH` for folders).
  Then `python -m classbias_jax.report --workdir=runs/imagenet_crop`.

Expected result, following the paper: mean accuracy is best with strong crops (0.08-0.2),
while some classes lose many points against weaker crops, e.g. "barn spider" falls from
68% to 46% when random crops are introduced; the report names the classes whose accuracy
moves, with intervals and FDR-controlled tests. Not run here: no ImageNet on this machine.

COST ON PAPER (an estimate from FLOP counts and one measured efficiency, not a
measurement of this study; `cost_on_paper()` computes it):

  per image, training: 3 x the forward pass = 3 x 7.90 GFLOP = 23.69 GFLOP (3.95 G
    multiply-adds forward, counted by classbias_jax.tuning.flops.model_flops from the
    program, padding taps excluded; the often-quoted 4.1 G differs by such conventions)
  per run: 23.69e9 x 1,281,167 images x 90 epochs = 2.73e18 FLOP
  crop study: x 120 runs = 3.28e20 FLOP;  wd study: x 60 runs = 1.64e20 FLOP
  efficiency: the fraction of peak measured in docs/benchmarks.md (GPU run 3: 8 CIFAR
    ResNet-18s in bf16 on one H100, 39,800 images/s x 2.89 GFLOP = 115 TFLOP/s), taken
    against the H100's nominal 989 TFLOP/s dense bf16: 115 / 989 = 11.6% (the document's
    16% is against the 737 TFLOP/s matmul peak it measured; nominal peaks are used below
    for every machine, so the nominal fraction is the consistent one). Applying it to
    ResNet-50 at 224 px, and to TPUs, is an assumption.

  | machine (peak = nominal dense bf16) | peak, TFLOP/s | x 11.6% | crop (120 runs) | wd (60 runs) |
  | TPU v4-32 = 16 chips x 275          | 4,400         | 512     | 178 h (7.4 d)   | 89 h (3.7 d) |
  | TPU v5e-16 = 16 chips x 197         | 3,152         | 367     | 248 h (10.4 d)  | 124 h (5.2 d)|
  | 8 x H100 (989 each)                 | 7,912         | 920     | 99 h (4.1 d)    | 49 h (2.1 d) |

  e.g. crop on 8 H100s: 3.28e20 / (7,912e12 x 0.1163) = 3.56e5 s = 99 h. Evaluation
  (forward passes on 50k images per model, once) adds under 1%; input decoding is on the
  host and assumed to keep up (check with `python -m classbias_jax.tuning.input_throughput`).
  A larger fraction of peak, as ResNet-50's larger convolutions may reach, shortens these
  proportionally.

Offline on CPU (`runlocal`): the same code path, at toy scale. The planted dataset
(classbias_jax/data/planted.py) written once as JPEG files in ImageNet's layout
(train/<class>/*.JPEG, val/<class>/*.JPEG, sides 40-64 px) under ~/.cache/classbias_jax
(or data.data_dir) and read through the `folder:` reader, streamed, resized to 32x32;
ResNet-50 with the ImageNet stem at 1/8 width; crop scales 0.08 and 1.0 x 2 seeds, 12
epochs, batch 64, learning rate 0.1:

  python -m classbias_jax.main --config=configs/imagenet.py:runlocal --workdir=/tmp/imagenet_local

Measured: 6.0 minutes wall on two cores shared with other jobs (load 4-6), with an empty
compilation cache and the folder written first (4,000 JPEG files, about 15 s); compiling
ResNet-50 is most of the fixed cost (the first epoch takes 69 s, later ones 13-16 s, and
compiling the state's initialisation alone took 60 s in a separate measurement), so a
rerun with the compilation cache is shorter. Mean accuracy 52.3% at scale 0.08 against
73.3% at 1.0; the crop- classes, told apart by corner markers, fall most: crop-top 99% ->
34%, crop-bottom 55% -> 19% (crop-plain 39% -> 43%). At 32 px the stem leaves 8x8 maps,
so the texture classes are undertrained too and also lose (none-rings 76% -> 32%), and
with 2 seeds the report flags no class (it says why: 1 degree of freedom per class).
`--config.data.image_size=64` (14 minutes measured, shared cores; mean 71.3% against
81.5%) gives the planted pattern: crop-top 99.5% -> 41.5%, crop-plain 53% -> 32%,
crop-bottom 46% -> 35%, while the none- classes stay within 7 points and the color- ones
within 12 (color-orange 95% -> 84%).

Args: runlocal, wd, seeds=N, epochs=N, batch=N (0 = the study's default), folder=PATH.
"""
from classbias_jax import configs

TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training images
FORWARD_FLOPS = 7.896e9  # per 224x224 image: tuning.flops.model_flops / 3 (tested)
CROP_VALUES = (0.08, 0.2, 0.4, 0.6, 0.8, 1.0)
WD_VALUES = (0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3)
CROP_SEEDS, WD_SEEDS, EPOCHS = 20, 10, 90
# docs/benchmarks.md, GPU run 3: 39,800 images/s x 2.89 GFLOP on one H100, bf16.
MEASURED_TFLOPS, H100_PEAK_TFLOPS = 115.0, 989.0
MACHINES = {  # name -> nominal dense bf16 peak of the whole machine, TFLOP/s
    'TPU v4-32 (16 chips x 275)': 16 * 275.0,
    'TPU v5e-16 (16 chips x 197)': 16 * 197.0,
    '8 x H100 (989 each)': 8 * H100_PEAK_TFLOPS,
}


def cost_on_paper(epochs: int = EPOCHS) -> dict:
  """The docstring's estimate: FLOPs per image, per run and per study, and hours per
  study on each machine at the measured fraction of peak."""
  per_image = 3 * FORWARD_FLOPS
  per_run = per_image * TRAIN_IMAGES * epochs
  fraction = MEASURED_TFLOPS / H100_PEAK_TFLOPS
  studies = {'crop': per_run * len(CROP_VALUES) * CROP_SEEDS,
             'wd': per_run * len(WD_VALUES) * WD_SEEDS}
  hours = {machine: {study: flops / (peak * 1e12 * fraction) / 3600
                     for study, flops in studies.items()}
           for machine, peak in MACHINES.items()}
  return {'flops_per_image': per_image, 'flops_per_run': per_run, 'study_flops': studies,
          'fraction_of_peak': fraction, 'hours': hours}


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, wd=False, seeds=0, epochs=0, batch=0,
                           folder='')
  c = configs.base_config()
  c.data.name = f'folder:{args.folder}' if args.folder else 'imagenet2012'
  c.data.image_size = 224
  c.data.input_mode = 'streamed'
  c.data.workers = 8
  c.model.name = 'resnet50'
  c.model.dtype = 'bfloat16'
  c.train.epochs = args.epochs or EPOCHS
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 5.0
  c.aug.crop_scale_min = 0.08
  c.aug.crop_scale_max = 1.0
  c.aug.crop_ratio_min = 3 / 4
  c.aug.crop_ratio_max = 4 / 3
  c.aug.flip_prob = 0.5
  if args.wd:
    c.sweep.name, c.sweep['values'], c.seeds = 'optim.weight_decay', WD_VALUES, WD_SEEDS
  else:
    c.sweep.name, c.sweep['values'], c.seeds = 'aug.crop_scale_min', CROP_VALUES, CROP_SEEDS
  batch = 256
  if args.runlocal:
    batch = _runlocal(c, args)
  c.seeds = args.seeds or c.seeds
  c.train.batch_size = args.batch or batch
  c.optim.learning_rate = 0.1 * c.train.batch_size / 256  # the linear scaling rule
  if args.runlocal:
    c.optim.learning_rate = 0.1  # as the other runlocal studies: 0.025 learns too slowly
  return c


def _runlocal(c, args) -> int:
  """Shrinks the study to two CPU cores on the planted ImageNet-layout folder (see the
  docstring); returns its batch size."""
  c.data.name = 'planted_folder'
  c.data.planted_train_per_class = 200
  c.data.image_size = 32
  c.data.workers = 0  # spawning worker processes costs more than decoding 32 px images
  c.model.width = 0.125
  c.model.dtype = 'float32'  # bfloat16 is slow on CPU
  c.train.epochs = args.epochs or 12
  c.train.eval_every = 0
  c.optim.warmup_epochs = 1.0
  c.seeds = 2
  c.sweep['values'] = (0.0, 1e-2) if args.wd else (0.08, 1.0)
  return 64
