r"""Random-erasing study: how the size of the erased patch changes the accuracy of each class.

RandomErasing(p=0.5, scale=(0.02, s), ratio=(0.3, 3.3), value=0) applied after
normalisation (0 is the dataset mean), with the largest erased area s swept; s = 0.02
erases a fixed 2% of the image, torchvision's default is s = 0.33. The arg `prob` sweeps
the probability instead (p in 0 ... 1 at torchvision's scale (0.02, 0.33); p = 0 is off).

Real study (CIFAR-10, CIFAR ResNet-20 as in Zhong et al. 2020, 5 scales x 8 seeds =
40 models, 60 epochs, SGD 0.1 momentum 0.9 cosine, wd 5e-4, pad-4 crop + flip under the
erasing):

  python -m classbias_jax.main --config=configs/erase.py --workdir=runs/erase_cifar10

Needs CIFAR-10 prepared for TFDS in `data.data_dir` (see README, "Datasets"). Expected
runtime: about 30 minutes on one H100-class GPU (an estimate: small convolutions run far
below peak, so it is not scaled from FLOPs; not yet measured). Expected result: mean
accuracy rises a little with erasing (Zhong et al.: ResNet-20 test error 7.21% -> 6.73%
with p = 0.5 at 300 epochs), while some classes gain and others lose a few points at
the largest patches; the report names them.

Offline on CPU in a few minutes (the planted dataset at 16x16, 200 training images per
class, ResNet-8 at half width, 5 x 4 models, 12 epochs; 3.2 minutes measured on two
shared cores, on the slower day of configs/color.py's figures):

  python -m classbias_jax.main --config=configs/erase.py:runlocal --workdir=runs/erase
  python -m classbias_jax.report --workdir=runs/erase

Expected: mean accuracy 99.9-100% at every scale, and the report flags no class hurt or
helped anywhere, absolutely or beyond the shift (tau 0 at every scale). The planted
dataset has no class built for erasing (a patch hides the `crop-` corner markers in only
a few views), so every class stays within 1 point of 100%. This checks that the study
runs and that a knob without a planted effect flags nothing.

Fashion-MNIST on two CPU cores (6k stratified training images, the full 10k test set,
ResNet-8 at half width, 4 values x 4 seeds, 8 epochs; about 20 minutes on two quiet
cores, not yet run):

  python -m classbias_jax.main --config=configs/erase.py:fashion --workdir=runs/erase_fashion

Args: runlocal, fashion, prob, seeds=N, epochs=N (0 = the study's default).
"""
from classbias_jax import configs


def get_config(arg=None):
  args = configs.parse_arg(arg, runlocal=False, fashion=False, prob=False, seeds=0,
                          epochs=0)
  c = configs.base_config()
  c.seeds = args.seeds or 8
  c.data.name = 'cifar10'
  c.model.name = 'resnet20'
  c.model.dtype = 'bfloat16'
  c.train.epochs = args.epochs or 60
  c.train.batch_size = 128
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.aug.pad_crop = 4
  c.aug.flip_prob = 0.5
  c.aug.erase_scale_min = 0.02
  c.aug.erase_ratio_min = 0.3
  c.aug.erase_ratio_max = 3.3
  c.aug.erase_value = 0.0
  if args.prob:
    c.sweep.name = 'aug.erase_prob'
    c.sweep['values'] = (0.0, 0.25, 0.5, 0.75, 1.0)
    c.aug.erase_scale_max = 0.33
  else:
    c.sweep.name = 'aug.erase_scale_max'
    c.sweep['values'] = (0.02, 0.1, 0.2, 0.33, 0.5)  # not below erase_scale_min
    c.aug.erase_prob = 0.5

  if args.runlocal:
    configs.planted_runlocal(c, args, seeds=4, epochs=12)
    c.aug.pad_crop = 0  # the planted markers sit on the edge; padding would move them off
    c.aug.flip_prob = 0.5

  if args.fashion:  # Fashion-MNIST on two CPU cores, as crop.py:fashion (Zhong et al.'s set)
    configs.fashion_local(c, args, epochs=8)
    c.aug.pad_crop = 2
    c.aug.flip_prob = 0.5
    if not args.prob:
      c.sweep['values'] = (0.02, 0.1, 0.2, 0.33)
  return c
