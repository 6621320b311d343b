"""The ImageNet study (configs/imagenet.py): its variants, the two ImageNet layouts it
reads (class folders with val/ and .JPEG files; TFDS with a 'validation' split), the
planted ImageNet-layout folder of its runlocal variant, and its cost estimate."""
import json
import os
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from classbias_jax import configs, data
from classbias_jax.train import trainer
from classbias_jax.data import planted
from classbias_jax.errors import ConfigError, DataUnavailable

SPEC = 'configs/imagenet.py'


def data_config(**fields):
  cfg = ml_collections.ConfigDict(dict(name='', data_dir='', val_fraction=0.0, train_subset=0,
                                       image_size=0, split_seed=0))
  cfg.update(fields)
  return cfg


def load(arg=''):
  return configs.load(f'{SPEC}:{arg}' if arg else SPEC)


def study_module():
  import importlib.util
  spec = importlib.util.spec_from_file_location('imagenet_study', SPEC)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('arg, knob, seeds, values', [
    ('', 'aug.crop_scale_min', 20, (0.08, 0.2, 0.4, 0.6, 0.8, 1.0)),
    ('wd', 'optim.weight_decay', 10, (0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3)),
    ('runlocal', 'aug.crop_scale_min', 2, (0.08, 1.0)),
    ('runlocal,wd', 'optim.weight_decay', 2, (0.0, 1e-2)),
])
def test_every_variant_validates_and_sweeps_its_knob(arg, knob, seeds, values):
  c = load(arg)
  configs.validate(c)
  assert c.sweep.name == knob and c.seeds == seeds
  assert tuple(c.sweep['values']) == pytest.approx(values)
  assert c.model.name == 'resnet50' and c.data.input_mode == 'streamed'
  if 'runlocal' in arg:
    assert c.data.name == 'planted_folder' and c.model.dtype == 'float32'
  else:
    assert c.data.name == 'imagenet2012' and c.data.image_size == 224
    assert c.model.dtype == 'bfloat16' and c.train.epochs == 90
    assert (c.train.batch_size, c.optim.learning_rate) == (256, 0.1)
    assert c.optim.weight_decay == 1e-4 and c.aug.flip_prob == 0.5
  if knob == 'optim.weight_decay':
    assert c.aug.crop_scale_min == 0.08  # the standard crop under the decay sweep


def test_args_folder_seeds_epochs_batch():
  c = load('folder=/data/imagenet,seeds=3,epochs=16,batch=1024')
  assert c.data.name == 'folder:/data/imagenet'
  assert (c.seeds, c.train.epochs, c.train.batch_size) == (3, 16, 1024)
  assert c.optim.learning_rate == pytest.approx(0.4)  # 0.1 per 256 images


@pytest.mark.parametrize('arg', ['wdd', 'runlocal,noflip', 'seeds=x', 'folder'])
def test_unknown_or_malformed_args_are_errors(arg):
  with pytest.raises(ConfigError):
    load(arg)


# ---- the two ImageNet layouts ------------------------------------------------------------

def write_imagenet_folder(root, split, wnids, per_class, seed):
  """root/split/<wnid>/<wnid>_<i>.JPEG of random RGB images of mixed sizes."""
  rng = np.random.default_rng(seed)
  for wnid in wnids:
    os.makedirs(root / split / wnid)
    for i in range(per_class):
      h, w = rng.integers(12, 20, 2)
      image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      Image.fromarray(image).save(root / split / wnid / f'{wnid}_{i}.JPEG')


@pytest.mark.parametrize('mode', ['resident', 'streamed'])
def test_imagenet_folder_layout_with_val_and_upper_case_jpeg(tmp_path, mode):
  wnids = ['n01440764', 'n01443537', 'n01484850']
  write_imagenet_folder(tmp_path, 'train', wnids, 4, seed=0)
  write_imagenet_folder(tmp_path, 'val', wnids, 2, seed=1)
  cfg = data_config(name=f'folder:{tmp_path}', image_size=16)
  ds = data.load(cfg) if mode == 'resident' else data.open_streamed(cfg)
  assert ds.class_names == tuple(wnids) and ds.num_train == 12
  assert ds.test_images.shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(ds.test_labels, [0, 0, 1, 1, 2, 2])


def test_a_val_folder_of_loose_files_is_an_error(tmp_path):
  write_imagenet_folder(tmp_path, 'train', ['n01440764'], 2, seed=0)
  os.makedirs(tmp_path / 'val')
  Image.new('RGB', (8, 8)).save(tmp_path / 'val' / 'ILSVRC2012_val_00000001.JPEG')
  with pytest.raises(DataUnavailable, match='class folders'):
    data.load(data_config(name=f'folder:{tmp_path}', image_size=8))


def test_tfds_validation_split_is_the_test_split(tmp_path):
  # tests/test_data_sources.py prepares TFDS datasets locally, without TensorFlow.
  from test_data_sources import build_tfds, image_keys, png_bytes, tfds
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.ClassLabel(names=['tench', 'goldfish', 'shark'])})
  arrays = build_tfds(tmp_path, 'tiny_imagenet2012',
                      {'train': (12, (10, 10, 3)), 'validation': (6, (10, 10, 3))},
                      features, png_bytes)
  cfg = data_config(name='tiny_imagenet2012', data_dir=str(tmp_path))
  ds = data.load(cfg)
  assert image_keys(ds.test_images, ds.test_labels) == image_keys(*arrays['validation'])
  streamed = data.open_streamed(data_config(name='tiny_imagenet2012', data_dir=str(tmp_path),
                                            image_size=10))
  assert image_keys(streamed.test_images, streamed.test_labels) == \
      image_keys(*arrays['validation'])


# ---- the planted ImageNet-layout folder -------------------------------------------------------

def test_planted_folder_is_written_once_in_imagenet_layout(tmp_path):
  cfg = data_config(name='planted_folder', data_dir=str(tmp_path), image_size=32,
                    planted_train_per_class=3)
  ds = data.load(cfg)
  path = planted.folder_path(cfg)
  assert ds.name == f'folder:{path}'
  assert ds.class_names == tuple(sorted(planted.CLASS_NAMES))
  assert ds.train_images.shape == (30, 32, 32, 3)
  assert ds.test_images.shape == (10 * planted.TEST_PER_CLASS, 32, 32, 3)
  files = os.listdir(os.path.join(path, 'val', 'crop-top'))
  assert all(f.endswith('.JPEG') for f in files)
  assert [p for p in os.listdir(os.path.dirname(path)) if p.startswith('.tmp-')] == []
  stamp = os.path.getmtime(os.path.join(path, 'train'))
  streamed = data.open_streamed(cfg)  # reused, not written again
  assert os.path.getmtime(os.path.join(path, 'train')) == stamp
  np.testing.assert_array_equal(streamed.test_images, ds.test_images)


def test_runlocal_trains_end_to_end_through_the_folder_reader(tmp_path):
  config = configs.smoke(load('runlocal'))  # tiny model, sweep ends, 1 seed, 1 epoch
  config.data.data_dir = str(tmp_path / 'data')
  config.data.planted_train_per_class = 13  # two steps of 64
  arrays = trainer.run(config, str(tmp_path / 'run'))
  assert arrays['per_class_accuracy'].shape == (2, 1, 10)
  resolved = json.loads((tmp_path / 'run' / 'config.json').read_text())['resolved']
  assert resolved['input_mode'] == 'streamed'
  assert set(resolved['augment_ops']) == {'crop', 'flip'}


# ---- the cost on paper -----------------------------------------------------------------

def test_cost_on_paper_matches_the_model_and_the_docstring():
  from classbias_jax.models import create_model
  from classbias_jax.tuning.flops import model_flops
  study = study_module()
  flops = model_flops(create_model('resnet50', 1000), (224, 224, 3), batch_size=1)
  cost = study.cost_on_paper()
  assert cost['flops_per_image'] == pytest.approx(flops, rel=1e-3)
  doc = study.__doc__
  assert f'{flops / 1e9:.2f} GFLOP (' in doc
  sci = lambda x: f'{x:.2e}'.replace('e+', 'e')  # the docstring writes 2.73e18
  assert f'{sci(cost["flops_per_run"])} FLOP' in doc
  for study_name in ('crop', 'wd'):
    assert f'{sci(cost["study_flops"][study_name])} FLOP' in doc
  assert f'{100 * cost["fraction_of_peak"]:.1f}%' in doc
  rows = [line for line in doc.splitlines() if re.match(r'\s*\| (TPU|8 x)', line)]
  assert len(rows) == len(study.MACHINES)
  for row, (machine, hours) in zip(rows, cost['hours'].items()):
    assert machine.split(' (')[0] in row
    assert f'{hours["crop"]:.0f} h' in row and f'{hours["wd"]:.0f} h' in row
