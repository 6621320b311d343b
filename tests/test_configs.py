"""Config helpers: the arg parser, loading a study file by path, validation."""
import pytest
from conftest import ROOT

from classbias_jax import configs, knob_table
from classbias_jax.errors import ConfigError


def test_parse_arg_types_and_unknown_keys():
  args = configs.parse_arg('runlocal,seeds=4', runlocal=False, seeds=8, lr=0.1)
  assert args.runlocal is True and args.seeds == 4 and args.lr == 0.1
  with pytest.raises(ConfigError, match='unknown config arg'):
    configs.parse_arg('sedes=4', seeds=8)
  with pytest.raises(ConfigError, match='not a int'):
    configs.parse_arg('seeds=four', seeds=8)
  with pytest.raises(ConfigError, match='needs a value'):
    configs.parse_arg('seeds', seeds=8)


def test_load_by_path_and_smoke():
  c = configs.load('configs/wd.py:runlocal,seeds=3', root=ROOT)
  assert c.seeds == 3 and c.data.name == 'digits' and c.sweep.name == 'optim.weight_decay'
  real = configs.load('configs/wd.py', root=ROOT)
  assert real.data.name == 'cifar100' and real.seeds == 8
  assert tuple(real.sweep['values']) == (0.0, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3)
  small = configs.smoke(configs.load('configs/wd.py:runlocal', root=ROOT))
  assert small.model.name == 'tiny' and small.seeds == 1 and len(small.sweep['values']) == 2
  with pytest.raises(ConfigError, match='no config file'):
    configs.load('configs/nope.py', root=ROOT)


def test_the_full_fashion_study_is_the_fashion_study_at_full_size():
  """configs/wd.py:fashion,full (benchmarks/gpu_sweep.sh): all training images, ResNet-20
  at full width, the same 4 x 4 sweep; 'full' without 'fashion' is refused."""
  cpu = configs.load('configs/wd.py:fashion', root=ROOT)
  full = configs.load('configs/wd.py:fashion,full', root=ROOT)
  assert (full.data.name, full.data.train_subset, full.model.name, full.model.width) == (
      'fashion_mnist', 0, 'resnet20', 1.0)
  assert cpu.data.train_subset == 10000 and cpu.model.name == 'resnet8'
  assert tuple(full.sweep['values']) == tuple(cpu.sweep['values']) and full.seeds == 4
  assert configs.load('configs/wd.py:fashion,full,epochs=20', root=ROOT).train.epochs == 20
  with pytest.raises(ConfigError, match="give it with 'fashion'"):
    configs.load('configs/wd.py:full', root=ROOT)


@pytest.mark.parametrize('field,value,message', [
    ('sweep.name', 'model.name', 'cannot be swept'),
    ('train.strategy', 'magic', 'train.strategy'),
    ('seeds', 0, 'seeds must be'),
    ('model.dtype', 'float16', 'model.dtype'),
    ('train.profile_steps', (3,), 'train.profile_steps'),  # (first step, count)
    ('train.profile_steps', (-1, 2), 'train.profile_steps'),
    ('train.profile_steps', (0, 0), 'train.profile_steps'),
    ('train.profile_steps', (1.5, 2), 'train.profile_steps'),
    ('train.profile_steps', (1, 2, 3), 'train.profile_steps'),
    ('train.partner_timeout_s', 0.0, 'partner_timeout_s must be a number of seconds from 1'),
    ('train.partner_timeout_s', float('nan'), 'partner_timeout_s .* got nan'),
    ('train.partner_timeout_s', 1e6, 'partner_timeout_s .* to 86400'),
])
def test_validate_rejects(field, value, message):
  c = configs.base_config()
  node = c
  *path, last = field.split('.')
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ConfigError, match=message):
    configs.validate(c)


def test_repeated_sweep_values_rejected():
  c = configs.base_config()
  c.sweep['values'] = (0.1, 0.1)
  with pytest.raises(ConfigError, match='repeated'):
    configs.validate(c)


def test_class_knobs_only_for_per_class_knobs():
  c = configs.base_config()
  c.class_knobs.color_strength = (0.0,) * 10
  configs.validate(c)
  c.class_knobs.weight_decay = (0.0,) * 10  # applied per batch, not per image
  with pytest.raises(ConfigError, match='not a per-class knob'):
    configs.validate(c)


def test_every_traced_knob_is_a_sweepable_config_field():
  c = configs.base_config()
  for name in knob_table.traced_knobs():
    c.sweep.name = name
    c.sweep['values'] = (knob_table.KNOBS[name].default,)
    configs.validate(c)
    assert knob_table.get_field(c, name) == knob_table.KNOBS[name].default


@pytest.mark.parametrize('field,value,message', [
    ('optim.weight_decay', -1e-4, r'optim.weight_decay = -0.0001 is outside \[0, inf\]'),
    ('optim.learning_rate', float('nan'), 'optim.learning_rate = nan'),
    ('optim.learning_rate', float('inf'), 'optim.learning_rate = inf'),
    ('aug.flip_prob', 1.5, r'outside \[0, 1\]'),
    ('aug.crop_scale_min', 0.0, 'aug.crop_scale_min = 0.0 is outside'),
    ('model.width', 0.0, 'model.width must be > 0'),
])
def test_nonsense_values_are_refused(field, value, message):
  """Values that would train to the end with nothing to show are one-line errors."""
  c = configs.base_config()
  section, name = field.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=message):
    configs.validate(c)


def test_sweep_and_class_values_are_checked_too():
  c = configs.base_config()
  c.sweep['values'] = (0.0, -0.1)
  with pytest.raises(ConfigError, match='-0.1 is outside'):
    configs.validate(c)
  c = configs.base_config()
  c.class_knobs.color_strength = (float('nan'), -1.0)
  with pytest.raises(ConfigError, match='aug.color_strength = -1.0'):
    configs.validate(c)
  c = configs.base_config()
  c.aug.crop_scale_min, c.aug.crop_scale_max = 0.5, 0.3
  with pytest.raises(ConfigError, match='exceeds'):
    configs.validate(c)


@pytest.mark.parametrize('low, high', [(low.split('.')[1], high.split('.')[1])
                                       for low, high in knob_table.pairs()])
def test_a_swept_end_of_a_range_is_checked_against_the_fixed_end(low, high):
  c = configs.base_config()
  c.aug[low], c.aug[high] = 0.2, 0.5
  c.sweep.name, c.sweep['values'] = f'aug.{low}', (0.1, 0.5)
  configs.validate(c)  # 0.5 <= 0.5: a range of one value
  c.sweep['values'] = (0.1, 0.6)  # the swept minimum above the fixed maximum
  with pytest.raises(ConfigError, match=f'aug.{low} 0.6 exceeds aug.{high} 0.5 .*sweep'):
    configs.validate(c)
  c.sweep.name, c.sweep['values'] = f'aug.{high}', (0.15, 0.3)  # and the reverse
  with pytest.raises(ConfigError, match=f'aug.{low} 0.2 exceeds aug.{high} 0.15'):
    configs.validate(c)
  c.sweep['values'] = (0.25, 0.3)
  c.class_knobs[low] = (float('nan'), 0.28)  # class 1's minimum above the 0.25 maximum
  with pytest.raises(ConfigError, match=f'aug.{low} 0.28 exceeds aug.{high} 0.25 for a class'):
    configs.validate(c)
