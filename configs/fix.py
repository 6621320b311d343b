r"""Fix study: the arms that answer an audit, trained side by side and tested on test.

After a sweep of a per-class knob (crop, colour, erase, label smoothing) with a validation
split, `python -m classbias_jax.fix` writes the sweep's policy.json; this study trains,
with the same recipe (the study config named by `study=`), S seeds of each arm (arms.py):
the best uniform value, the knob off, the recommended policy (`fix --policy`), and the
uniform value with CLAM's per-class loss weights. Its report compares the arms on the
test split: mean, worst-class and 10th-percentile class accuracy with intervals over
seeds, and per-class effects against the best uniform arm.

Offline on CPU (the planted_shortcut dataset, where crops and colour jitter both help the
four none- classes and hurt three others; see classbias_jax/data/planted.py):

  python -m classbias_jax.main --config=configs/crop.py:runlocal,shortcut --workdir=runs/crop_sweep
  python -m classbias_jax.fix --workdir=runs/crop_sweep
  python -m classbias_jax.main --config=configs/fix.py:runlocal,study=crop \
      --config.fix.policy_from=runs/crop_sweep --workdir=runs/crop_fix
  python -m classbias_jax.report --workdir=runs/crop_fix

(`study=color` for the colour study; the same four commands with `color` for `crop`.)
Expected results are in docs/studies.md ("Fixing what the audit finds"), measured.

The fix study must train as its sweep did (data, model, epochs, optimiser, other knobs;
checked against the sweep's config.json): give it the overrides the sweep had, e.g.
`fashion` and --config.data.val_fraction=0.1 for a sweep of configs/crop.py:fashion.

Args: study (crop, color, erase, smooth: a study file beside this one), runlocal (the
study's shortcut sweep where it has one, crop and color, else its runlocal sweep, which
needs --config.data.val_fraction=0.1 here as in the sweep), fashion, seeds=N, epochs=N
(0 = the study's).
"""
import os

import ml_collections

from classbias_jax import configs
from classbias_jax.errors import ConfigError


def get_config(arg=None):
  args = configs.parse_arg(arg, study='crop', runlocal=False, fashion=False, seeds=0, epochs=0)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'{args.study}.py')
  if not os.path.isfile(path):
    raise ConfigError(f'fix study: no study config {args.study}.py beside fix.py')
  c = _study(path, args)
  if args.runlocal and not args.seeds:
    # The sweep needs 8 seeds to find the classes on validation; the arms' large
    # differences on test show with 4 (docs/studies.md).
    c.seeds = 4
  c.sweep.name = configs.ARM_SWEEP
  # uniform, off, the recommended policy, CLAM's loss weights (configs.ARMS; 4 and 5 add the
  # per_class and protect policies side by side)
  c.sweep['values'] = (0.0, 1.0, 2.0, 3.0)
  c.seed += 1000  # fresh seeds: the arms are a new experiment, not the sweep's models again
  c.fix = ml_collections.ConfigDict()
  c.fix.policy_from = ''  # the sweep's folder, holding policy.json
  c.fix.class_weight_rate = 1.0  # the loss_weights arm's rate (CLAM's rule: 1)
  return c


def _study(path: str, args) -> ml_collections.ConfigDict:
  """The study's config as its sweep ran: with `runlocal`, its planted shortcut sweep
  (`runlocal,shortcut`) where the study has one (crop, color), else plain `runlocal`."""
  rest = ['fashion' if args.fashion else '', f'seeds={args.seeds}' if args.seeds else '',
          f'epochs={args.epochs}' if args.epochs else '']
  if args.runlocal:
    try:
      return configs.load(f'{path}:' + ','.join(filter(None, ['runlocal,shortcut', *rest])),
                          root='')
    except ConfigError as e:
      if "unknown config arg 'shortcut'" not in str(e):
        raise
  return configs.load(f'{path}:' + ','.join(filter(None, ['runlocal' if args.runlocal else '',
                                                         *rest])), root='')
