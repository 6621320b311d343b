"""The augmentation studies (configs/crop.py, color.py, erase.py, mixup.py, smooth.py): what each sweeps, that
each trains end to end, and that a per-class knob table reaches the augmentation."""
import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import ROOT

from classbias_jax import configs, results
from classbias_jax.train.plan import augment_ops, build_plan
from classbias_jax.train import design
from classbias_jax.train import one_model
from classbias_jax.train import trainer
from classbias_jax.data import planted
from classbias_jax.errors import ConfigError

# runlocal: seeds (at least 4 where the report's flags are the expected result) and values
RUNLOCAL = {'crop': (8, (0.08, 0.4, 0.8, 1.0)), 'color': (8, None), 'erase': (4, None),
            'mixup': (8, (0.0, 0.4, 1.0)), 'smooth': (8, (0.0, 0.1, 0.3))}
# study -> (swept knob, its values, the augmentation the sweep must compile)
STUDIES = {
    'crop': ('aug.crop_scale_min', (0.08, 0.2, 0.4, 0.6, 0.8, 1.0), 'crop'),
    'color': ('aug.color_strength', (0.0, 0.25, 0.5, 0.75, 1.0), 'color'),
    'erase': ('aug.erase_scale_max', (0.02, 0.1, 0.2, 0.33, 0.5), 'erase'),
    'mixup': ('aug.mixup_alpha', (0.0, 0.2, 0.5, 1.0, 2.0), 'mix'),
    'smooth': ('loss.label_smoothing', (0.0, 0.05, 0.1, 0.2, 0.3), 'smooth'),
}


def load(name, arg=''):
  return configs.load(f'configs/{name}.py:{arg}', root=ROOT)


def compiled_ops(config):
  """The augmentations trainer.run would compile for this config."""
  knobs = design.knob_arrays(config, design.sweep_from_config(config),
                               len(planted.CLASS_NAMES))
  return set(augment_ops(config, knobs)), knobs


@pytest.mark.parametrize('arg', ['', 'runlocal'])
@pytest.mark.parametrize('name', sorted(STUDIES))
def test_sweeps_its_knob(name, arg):
  knob, values, op = STUDIES[name]
  config = load(name, arg)
  configs.validate(config)
  seeds, local_values = RUNLOCAL[name]
  values = (local_values or values) if arg else values
  assert config.sweep.name == knob
  assert tuple(config.sweep['values']) == pytest.approx(values)
  ops, knobs = compiled_ops(config)
  assert op in ops
  # Each model gets its sweep value: rows of the [V, S] layout hold one value each.
  per_model = knobs[knob.split('.')[-1]].reshape(len(values), config.seeds)
  np.testing.assert_allclose(per_model, np.repeat(np.array(values)[:, None], config.seeds, 1),
                             rtol=1e-6)
  if arg:
    assert config.data.name == 'planted' and config.seeds == seeds >= 4
  else:
    assert config.data.name.startswith('cifar') and config.seeds == 8


def test_crop_flips_unless_noflip():
  assert 'flip' in compiled_ops(load('crop', 'runlocal'))[0]
  assert load('crop').aug.flip_prob == 0.5
  config = load('crop', 'runlocal,noflip')
  assert config.aug.flip_prob == 0 and 'flip' not in compiled_ops(config)[0]


def test_erase_prob_sweeps_the_probability():
  config = load('erase', 'runlocal,prob')
  configs.validate(config)
  assert config.sweep.name == 'aug.erase_prob'
  assert tuple(config.sweep['values']) == (0.0, 0.25, 0.5, 0.75, 1.0)
  assert 'erase' in compiled_ops(config)[0]
  # The scale sweep never goes below the fixed lower bound of the erased area.
  assert min(load('erase').sweep['values']) >= load('erase').aug.erase_scale_min


def test_mixup_cutmix_sweeps_cutmix_alone():
  for arg in ('cutmix', 'runlocal,cutmix'):
    config = load('mixup', arg)
    configs.validate(config)
    assert config.sweep.name == 'aug.cutmix_alpha' and config.aug.mixup_alpha == 0
    ops, knobs = compiled_ops(config)
    assert ops >= {'mix'} and not knobs['mixup_alpha'].any()


@pytest.mark.parametrize('name', sorted(STUDIES))
def test_seeds_and_epochs_args(name):
  for arg in ('seeds=3,epochs=4', 'runlocal,seeds=3,epochs=4'):
    config = load(name, arg)
    assert (config.seeds, config.train.epochs) == (3, 4)


@pytest.mark.parametrize('arg', ['bogus', 'runlocal,bogus=1', 'seeds', 'runlocal=maybe'])
@pytest.mark.parametrize('name', sorted(STUDIES))
def test_unknown_or_malformed_args_are_errors(name, arg):
  with pytest.raises(ConfigError):
    load(name, arg)


@pytest.mark.parametrize('name', ['color', 'crop', 'mixup', 'smooth'])
def test_study_trains_end_to_end(name, tmp_path):
  config = configs.smoke(load(name, 'runlocal'))  # tiny model, sweep ends, 1 seed, 1 epoch
  config.data.planted_train_per_class = 13  # two steps of 64
  for field in ('planted_rare', 'planted_mixed_train'):  # the rare and mixed classes' images
    config.data[field] = min(config.data[field], 5)
  arrays = trainer.run(config, str(tmp_path))
  names = planted.CLASS_NAMES + ((planted.MIXED_CLASSES[config.data.planted_mixed],)
                                 if config.data.planted_mixed else ())
  knob, values, op = STUDIES[name]
  values = RUNLOCAL[name][1] or values
  n = len(arrays['test_labels'])
  assert arrays['per_class_accuracy'].shape == (2, 1, len(names))
  assert arrays['test_predictions'].shape == (2, 1, n)
  assert arrays['mean_accuracy'].shape == (2, 1)
  assert arrays['sweep_values'].tolist() == pytest.approx([values[0], values[-1]])
  assert list(arrays['class_names']) == list(names)
  assert str(results.load_results(str(tmp_path))['sweep_name']) == knob
  resolved = json.loads((tmp_path / 'config.json').read_text())['resolved']
  assert op in resolved['augment_ops']


@pytest.mark.parametrize('base, table', [
    (1.0, [0.0] + [np.nan] * 9),  # jitter on, off for class 0 alone
    (0.0, [np.nan] * 3 + [1.0] + [np.nan] * 6),  # jitter off, on for class 3 alone
])
def test_class_knob_table_reaches_the_augmentation(base, table):
  """Through knob_arrays, augment_ops and train's preprocessing, one model's per-class
  colour strength leaves exactly the classes with strength 0 unaugmented."""
  config = load('color', 'runlocal')
  config.seeds = 1
  config.sweep['values'] = (base,)
  config.class_knobs.color_strength = tuple(table)
  ops, knobs = compiled_ops(config)
  strength = np.where(np.isnan(table), base, table)
  np.testing.assert_array_equal(knobs['color_strength'], strength[None])  # [M, C]
  assert ops == {'color'}

  images, labels = planted.generate(4, seed=0, size=16)
  mean, std = np.full(3, 0.4, np.float32), np.full(3, 0.25, np.float32)
  model_knobs = {k: v[0] for k, v in knobs.items()}  # model 0, as the model axis gives it
  key = jax.random.key(0)
  plan = build_plan(config, num_train=config.train.batch_size,
                        num_classes=len(planted.CLASS_NAMES),
                        image_shape=images.shape[1:], mean=mean, std=std, strategy='unroll')
  assert plan.ops == ('color',)
  augmented, _ = one_model.make_preprocess(plan)(key, images, labels, model_knobs)
  plain_plan = dataclasses.replace(plan, ops=())
  plain, _ = one_model.make_preprocess(plain_plan)(key, images, labels, model_knobs)
  change = np.abs(np.asarray(augmented) - np.asarray(plain)).max(axis=(1, 2, 3))
  off = strength[labels] == 0
  assert change[off].max() < 1e-4  # hue 0 is an HSV round trip: float rounding only
  assert change[~off].min() > 0.05


def test_planted_image_size():
  small, labels = planted.generate(2, seed=1, size=16)
  full, labels_full = planted.generate(2, seed=1)
  assert small.shape == (20, 16, 16, 3) and small.dtype == np.uint8
  np.testing.assert_array_equal(labels, labels_full)
  # Block means of the same drawing (up to rounding and clipping of the noisy pixels).
  blocks = full.reshape(20, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(2, 4))
  assert np.median(np.abs(blocks - small)) <= 1.0
  with pytest.raises(ConfigError):
    planted.generate(2, seed=1, size=12)
