"""The KNOBS table is the one place a knob is described: its rows agree with the kernels
that consume them, name unique short names, and drive validation and figures."""
import inspect

import numpy as np
import pytest

from classbias_jax import augment, configs, knob_table
from classbias_jax.audit import figures
from classbias_jax.errors import ConfigError
from classbias_jax.train import plan as plan_module

KERNEL_STAGES = plan_module.KERNEL_STAGES


def test_configs_still_names_the_table():
  """knob_table.py holds the table; users read it as configs.KNOBS, the same object."""
  assert configs.KNOBS is knob_table.KNOBS and configs.Knob is knob_table.Knob
  assert configs.short_name('aug.color_strength') == 'color_strength'


def test_short_names_are_unique():
  shorts = [knob_table.short_name(n) for n in knob_table.KNOBS]
  assert len(shorts) == len(set(shorts))


def test_every_row_names_a_stage_its_op_shares():
  for name, knob in knob_table.KNOBS.items():
    assert knob.stage in knob_table.STAGES, name
    assert {k.stage for k in knob_table.KNOBS.values() if k.op == knob.op} == {knob.stage}, name
  assert set(KERNEL_STAGES) | {'step'} == set(knob_table.STAGES)


def test_every_kernel_takes_exactly_its_ops_knobs():
  """A kernel's parameters after (key, input) (and targets, in the batch stage) are the
  short names of its op's rows, so the table alone hands each kernel its knobs."""
  ops = {k.op for k in knob_table.KNOBS.values() if k.stage in KERNEL_STAGES}
  assert ops == set(augment.KERNELS)
  for op, kernel in augment.KERNELS.items():
    skip = 3 if knob_table.KNOBS[next(n for n, k in knob_table.KNOBS.items() if k.op == op)].stage \
        == 'batch' else 2
    params = tuple(inspect.signature(kernel).parameters)[skip:]
    assert params == knob_table.knobs_of(op), op


def test_every_op_can_be_turned_off():
  """Each op has a knob with an off value, so a plan leaves it out when every model is off;
  the base config compiles no op at all."""
  for op in augment.KERNELS:
    assert any(k.off is not None for k in knob_table.KNOBS.values() if k.op == op), op
  config = configs.base_config()
  defaults = {knob_table.short_name(n): np.full(2, k.default) for n, k in knob_table.KNOBS.items()}
  assert plan_module.augment_ops(config, defaults) == ()


def test_batch_stage_knobs_are_per_model_scalars():
  """The batch stage mixes whole batches: its knobs cannot be per-class tables."""
  for name, knob in knob_table.KNOBS.items():
    if knob.stage == 'batch':
      assert knob.traced and not knob.per_class, name


def test_ranges_and_pairs_come_from_the_rows():
  for name, knob in knob_table.KNOBS.items():
    assert knob.low <= knob.default <= knob.high, name
    if knob.at_most:
      assert knob_table.KNOBS[knob.at_most].op == knob.op, name
      assert knob.default <= knob_table.KNOBS[knob.at_most].default, name
  c = configs.base_config()
  c.aug.crop_scale_min, c.aug.crop_scale_max = 0.5, 0.4
  with pytest.raises(ConfigError, match='aug.crop_scale_min 0.5 exceeds aug.crop_scale_max'):
    configs.validate(c)
  c.sweep.name, c.sweep['values'] = 'aug.crop_scale_min', (0.3, 0.4)
  configs.validate(c)  # a swept end of a range within the fixed end it pairs with
  c.sweep['values'] = (0.3, 0.5)
  with pytest.raises(ConfigError, match='aug.crop_scale_min 0.5 exceeds aug.crop_scale_max'):
    configs.validate(c)  # and not beyond it
  c = configs.base_config()
  c.loss.label_smoothing = 1.5
  with pytest.raises(ConfigError, match='loss.label_smoothing = 1.5 is outside'):
    configs.validate(c)


def test_a_new_pair_is_checked_from_its_row(monkeypatch):
  knobs = dict(knob_table.KNOBS)
  knobs['aug.mixup_alpha'] = knob_table.Knob(0.0, 'mix', 'batch', off=0.0,
                                          at_most='aug.cutmix_alpha')
  monkeypatch.setattr(knob_table, 'KNOBS', knobs)
  c = configs.base_config()
  c.aug.mixup_alpha = 0.5
  with pytest.raises(ConfigError, match='aug.mixup_alpha 0.5 exceeds aug.cutmix_alpha 0'):
    configs.validate(c)


def test_static_values_are_the_untraced_rows():
  c = configs.base_config()
  c.aug.pad_crop = 4
  static = knob_table.static_values(c)
  assert static['pad_crop'] == 4
  assert set(static) == {knob_table.short_name(n) for n, k in knob_table.KNOBS.items() if not k.traced}


def test_log_axis_follows_the_row(monkeypatch):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots()
  figures._x_axis(ax, 'optim.weight_decay', np.array([0.0, 1e-4, 1e-3]))
  assert ax.get_xscale() == 'log'
  fig, ax = plt.subplots()
  figures._x_axis(ax, 'aug.crop_scale_min', np.array([0.08, 1.0]))
  assert ax.get_xscale() == 'linear'
  knobs = dict(knob_table.KNOBS)
  knobs['aug.crop_scale_min'] = knob_table.Knob(1.0, 'crop', 'pixels', off=1.0, log_scale=True)
  monkeypatch.setattr(knob_table, 'KNOBS', knobs)
  fig, ax = plt.subplots()
  figures._x_axis(ax, 'aug.crop_scale_min', np.array([0.08, 1.0]))
  assert ax.get_xscale() == 'log'
  plt.close('all')
