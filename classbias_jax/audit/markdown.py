"""report.md's text, from the dict that analysis.analyze returns (analysis.json)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from classbias_jax.audit import dependence_markdown, formats
from classbias_jax.audit.analysis import off_index

FIGURES = 'figures'  # the figures' folder in WORKDIR


def _range(counts: list[int]) -> str:
  return f'{min(counts)}' if min(counts) == max(counts) else f'{min(counts)}-{max(counts)}'


def _family(stats: Mapping[str, Any]) -> str:
  fdr = stats['fdr']
  return f'{fdr["family"]}: {fdr["num_tests"]} tests'


def _status(stats: Mapping[str, Any]) -> str:
  return stats['inference']['status']


def _median(xs: list[float | None]) -> float | None:
  xs = [x for x in xs if x is not None]
  return float(np.median(xs)) if xs else None


def _mde(x: float | None) -> str:
  """A minimum detectable drop in points; one past 100 points is no drop at all."""
  if x is None:
    return 'n/a'
  return 'none possible (> 100 points)' if x > 1 else f'{formats.pct(x)} points'


def _dof(k: int) -> str:
  return f'{k} degree{"" if k == 1 else "s"} of freedom'


def _run_source(stats: Mapping[str, Any]) -> tuple[int, str]:
  """(degrees of freedom, where from) of the run-to-run variance of most comparisons."""
  seeds = stats['inference']['num_seeds']
  run = stats.get('run_variance') or {'values_pooled': 2}
  values = run['values_pooled']
  if values <= 2 or run.get('num_pooled', 0) < run.get('num_own', 0):
    return seeds - 1, f'its own {seeds} runs at the two values compared'
  return (values - 1) * (seeds - 1), f'its {values * seeds} runs over the {values} values'


def _seeds_text(k: float | None) -> str:
  return 'more than 1024 seeds (or more test images)' if k is None else f'about {k:.0f} seeds'


# --------------------------------------------------------------------------- sections

def _intro(stats: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
  """What was run, and what the numbers are measured against."""
  counts = stats['images_per_class']
  models = sum(v['num_models'] for v in stats['values'])
  ref, off = stats['reference'], stats['off_reference']
  lines = [f'# Per-class audit: `{stats["sweep_name"]}`', '']
  run = [f'{len(stats["values"])} values of `{stats["sweep_name"]}` '
         f'({", ".join(f"{v:g}" for v in stats["sweep_values"])}) x {len(stats["seeds"])} seeds'
         f' = {models} models kept; {stats["num_classes"]} classes, {stats["num_test_images"]}'
         f' test images ({_range(counts)} per class).']
  data, model = config.get('data', {}), config.get('model', {})
  train = config.get('train', {})
  if isinstance(data, dict) and isinstance(model, dict) and isinstance(train, dict):
    known = [f'{k} `{v}`' for k, v in (('dataset', data.get('name')), ('model', model.get('name')),
                                        ('epochs', train.get('epochs'))) if v is not None]
    if known:
      run.append('Run: ' + ', '.join(known) + ' (from config.json).')
  lines += [' '.join(run), '']
  lines.append(f'Effects are measured against `{formats.knob(stats)}={ref["value"]:g}` '
               f'({ref["chosen_by"]}), paired by seed and by test image. A class is **hurt** '
               f'or **helped** when its q-value is below {stats["alpha"]:g}; the q-values are '
               f'Benjamini-Hochberg over one family for the whole report ({_family(stats)}). '
               'Accuracies and effects are in percent and percentage points.')
  if off is None and off_index(stats['sweep_name'], stats['sweep_values']) == ref[
      'index']:
    lines.append('The reference is also the value that turns the knob off.')
  if off is not None:
    lines.append(f'The knob is off at `{formats.knob(stats)}={off["value"]:g}`; effects against that '
                 'value are in the summary table and analysis.json (`against_off`).')
  lines.append('')
  if stats['warnings']:
    lines += ['**Warnings**', ''] + [f'- {w}' for w in stats['warnings']] + ['']
  return lines


def _summary(stats: Mapping[str, Any]) -> list[str]:
  """One row per sweep value: accuracy summaries and counts of hurt / helped classes."""
  off = stats['off_reference'] is not None
  header = ['value', 'models', 'mean acc (95% CI)', '10th-pct class', 'worst class',
            'hurt', 'helped'] + dependence_markdown.summary_header() + (
                ['hurt / helped vs off'] if off else [])
  rows = []
  for v in stats['values']:
    is_ref = v['index'] == stats['reference']['index']
    untested = '-' if is_ref else 'not tested'
    tested = _status(stats) != 'conditional'
    row = [f'{v["value"]:g}' + (' (ref)' if is_ref else ''), v['num_models'],
           f'{formats.pct(v["mean_accuracy"])} ({formats.pct(v["mean_accuracy_low"])}-'
           f'{formats.pct(v["mean_accuracy_high"])})', formats.pct(v['p10_class_accuracy']),
           f'{formats.pct(v["worst_class_accuracy"])} {v["worst_class"]}',
           v['num_hurt'] if tested and not is_ref else untested,
           v['num_helped'] if tested and not is_ref else untested,
           *dependence_markdown.summary_cells(stats, v)]
    if off:
      against = v['against_off']
      row.append('-' if v['index'] == stats['off_reference']['index'] else
                 f'{against["num_hurt"]} / {against["num_helped"]}' if tested else untested)
    rows.append(row)
  return ['## Summary', ''] + formats.table(header, rows) + ['']


def _class_rows(stats, entry, classes) -> list[list[str]]:
  """Table rows for the named classes of one sweep value."""
  ref = stats['values'][stats['reference']['index']]
  index = {n: i for i, n in enumerate(stats['class_names'])}
  pc = entry['per_class']
  rows = []
  for name in classes:
    c = index[name]
    interval = f'{formats.signed(pc["low"][c])} to {formats.signed(pc["high"][c])}'
    rows.append([name, formats.pct(ref['accuracy'][c]), formats.pct(entry['accuracy'][c]),
                 f'{formats.signed(pc["effect"][c])} ({interval})', formats.prob(pc['p'][c]),
                 formats.prob(pc['q'][c])])
  return rows


def _largest(entry, names, sign: int, k: int) -> list[str]:
  """The k classes with the largest drops (sign -1) or rises (+1), untested."""
  effect = [(sign * e, n) for e, n in zip(entry['per_class']['effect'], names) if e is not None]
  return [n for e, n in sorted(effect, reverse=True)[:k] if e > 0]


def _effects(stats: Mapping[str, Any], top_k: int) -> list[str]:
  """Per non-reference value: the most hurt and most helped classes with their numbers."""
  ref = stats['reference']
  header = ['class', f'acc at {ref["value"]:g}', 'acc here', 'effect (95% CI)', 'p', 'q']
  conditional = _status(stats) == 'conditional'
  lines = []
  for entry in stats['values']:
    if entry['index'] == ref['index']:
      continue
    counts = ('not tested (one seed)' if conditional else
              f'{entry["num_hurt"]} hurt, {entry["num_helped"]} helped')
    lines += [f'### `{formats.knob(stats)}={entry["value"]:g}` vs `{ref["value"]:g}`: {counts}', '']
    lines += dependence_markdown.value_lead(stats, entry, top_k)
    for key, word, sign in (('hurt', 'Most hurt', -1), ('helped', 'Most helped', 1)):
      if conditional:
        entry = {**entry, key: _largest(entry, stats['class_names'], sign, top_k)}
        word = ('Largest drops' if sign < 0 else 'Largest rises') + (
            ' between these two runs, not tested')
      if entry[key]:
        shown = entry[key][:top_k]
        more = len(entry[key]) - len(shown)
        lines += [f'{word}' + (f' ({more} more in analysis.json)' if more else '') + ':', '']
        lines += formats.table(header, _class_rows(stats, entry, shown)) + ['']
    if not conditional and not entry['hurt'] and not entry['helped']:
      q = [x for x in entry['per_class']['q'] if x is not None]
      best = f' (smallest q: {formats.prob(min(q))})' if q else ''
      mde = _median(entry['per_class']['min_detectable_drop'])
      power = (f' Smallest drop this comparison could detect in the median class (80% '
               f'power; see Power): {_mde(mde)}.' if mde is not None else '')
      lines += [f'No class significantly hurt or helped{best}.{power}', '']
  return lines


def _conclusions(stats: Mapping[str, Any]) -> list[str]:
  """What a run with this many seeds can and cannot conclude, in plain words."""
  seeds, status = stats['inference']['num_seeds'], _status(stats)
  full = stats['inference']['seeds_for_full_test']
  if status == 'conditional':
    return ['**What this run can conclude.** With one seed, each effect compares one '
            'trained model with one other. A new pair of runs moves a class by an amount '
            'this run cannot measure, so effects and intervals below are conditional on these '
            'runs (they cover only the sampling of test images), and no class is listed as '
            f'hurt or helped. To test, run at least {full} seeds.', '']
  if status == 'limited':
    mdes = [m for v in stats['values'] for m in v['per_class']['min_detectable_drop']]
    mde = _median(mdes)
    dof, source = _run_source(stats)
    return [f'**What this run can conclude.** With {seeds} seeds, each class\'s run-to-run '
            f'variation is estimated from {source} ({_dof(dof)}), so only drops far larger '
            'than that variation and consistent across the seeds can be flagged (here, with 80% power in the median class: '
            f'{_mde(mde)}). A class that is not '
            f'flagged may still be hurt. The flags that are listed hold at the stated false '
            f'discovery rate. For a test with useful power, run at least {full} seeds (see '
            'Power).', '']
  return []


def _power(stats: Mapping[str, Any]) -> list[str]:
  """Minimum detectable drop per comparison and the seeds a 5-point drop needs."""
  if _status(stats) == 'conditional':
    return []
  target = stats['power']['target_drop']
  lines = ['## Power', '',
           f'The smallest drop each comparison would flag with {formats.pct(stats["power"]["power"], 0)}'
           f'% power, from each class\'s estimated variance components, its seeds and its test '
           f'images, at the p-value a lone real effect needs in this report\'s family '
           f'({stats["power"]["level"]:.1e}); and the seeds per value that a '
           f'{formats.pct(target, 0)}-point drop would need.', '']
  rows, names = [], stats['class_names']
  for v in stats['values']:
    if v['index'] == stats['reference']['index']:
      continue
    pc = v['per_class']
    mde = [np.inf if m is None else m for m in pc['min_detectable_drop']]
    worst = int(np.argmax(mde))
    med = int(np.argsort(mde)[len(mde) // 2])
    rows.append([f'{v["value"]:g}', _mde(_median(pc['min_detectable_drop'])),
                 f'{names[worst]} ({_mde(pc["min_detectable_drop"][worst])})',
                 _seeds_text(pc['seeds_needed'][med]), _seeds_text(pc['seeds_needed'][worst])])
  lines += formats.table(['value', 'median class', 'least testable class',
                   f'seeds for {formats.pct(target, 0)} points: median class',
                   'least testable class'], rows) + ['']
  return lines + _seeds_sentence(stats, target)


def _seeds_sentence(stats: Mapping[str, Any], target: float) -> list[str]:
  """'To detect a 5-point drop in class X you need about K seeds', for the least testable
  class not flagged at the focus value (or the first compared value)."""
  focus = stats['focus_index']
  if focus is None:
    return []
  entry, names = stats['values'][focus], stats['class_names']
  pc, flagged = entry['per_class'], set(entry['hurt']) | set(entry['helped'])
  mde = [-1 if m is None or names[c] in flagged else m
         for c, m in enumerate(pc['min_detectable_drop'])]
  c = int(np.argmax(mde))
  return [f'To detect a {formats.pct(target, 0)}-point drop in {names[c]}, the least testable '
          f'class not flagged at `{formats.knob(stats)}={entry["value"]:g}`, you need '
          f'{_seeds_text(pc["seeds_needed"][c])} per value. Per-class values: '
          '`min_detectable_drop` and `seeds_needed` in analysis.json.', '']


def _replication(stats: Mapping[str, Any]) -> list[str]:
  """Split-half replication table and the sentence a reader needs from it."""
  rep = stats['replication']
  lines = ['## Split-half replication', '',
           f'The test images are split at random into halves within each class '
           f'({rep["num_splits"]} splits, both ways round). Classes flagged (q < '
           f'{stats["alpha"]:g}) on one half are re-measured on the other: they replicate when '
           'the effect has the same sign and p < 0.05 there. Shrinkage is the flagged effects\' '
           'size on the other half over their size on the flagging half (1: no winner\'s curse).',
           '']
  if not rep['values']:
    return lines + ['Nothing to replicate: the sweep has a single usable value.', '']
  rows = [[f'{r["value"]:g}', f'{r["flagged_per_half"]:.1f}', formats.pct(r['replication_rate'], 0),
           formats.pct(r['same_sign_rate'], 0),
           'n/a' if r['shrinkage'] is None else f'{r["shrinkage"]:.2f}',
           f'{formats.signed(r["worst_class_effect_a"])} -> {formats.signed(r["worst_class_effect_b"])}']
          for r in rep['values']]
  lines += formats.table(['value', 'flagged per half', 'replicated (%)', 'same sign (%)', 'shrinkage',
                   'worst class: half A -> half B'], rows) + ['']
  pooled = rep['pooled']
  if pooled and pooled['replication_rate'] is not None:
    lines += [f'Pooled over values, {formats.pct(pooled["replication_rate"], 0)}% of flagged classes '
              f'replicated and their effects kept {formats.pct(pooled["shrinkage"], 0)}% of their size; '
              f'the worst class drop of {formats.signed(pooled["worst_class_effect_a"])} points on one '
              f'half measured {formats.signed(pooled["worst_class_effect_b"])} on the other.', '']
  return lines


def _flows(stats: Mapping[str, Any], top_k: int) -> list[str]:
  """For each value, where the most hurt classes' predictions went."""
  lines = []
  for entry in stats['values']:
    for flow in entry['confusion_flow'][:top_k]:
      gains = ', '.join(f'{t["class"]} {formats.signed(t["fraction"])}' for t in flow['to'])
      lines.append(f'- `{entry["value"]:g}`: **{flow["class"]}** lost {formats.pct(flow["lost"])} '
                   f'points; predictions gained by: {gains or "none"}')
  if not lines:
    return ['No class is significantly hurt, so there is no loss to trace.', '']
  return lines + ['']


def _seed_caveat(stats: Mapping[str, Any]) -> str:
  seeds = stats['inference']['num_seeds']
  if seeds < 2:
    return ('- One seed: the run-to-run variation of a class cannot be estimated, so nothing '
            'is tested; intervals cover the sampling of test images only.')
  dof, source = _run_source(stats)
  return (f'- Each class\'s run-to-run variance is its own, estimated from {source} '
          f'({_dof(dof)}, which bound the test\'s), not borrowed from '
          'other classes: classes differ several-fold in how much a new run moves them.'
          + (' With so few seeds the test is valid but has little power.'
             if _status(stats) == 'limited' else ''))


def _run_variance_caveat(stats: Mapping[str, Any]) -> list[str]:
  """Which run-to-run variance ran (pooled over values or pairwise), why, and its fallbacks."""
  run = stats.get('run_variance')
  if not run or stats['inference']['num_seeds'] < 2:
    return []
  line = f'- Run-to-run variance: {run["method"]}, because {run["why"]}.'
  if run['method'] == 'pooled' and run['values_pooled'] > 2:
    line += (f' {run["num_pooled"]} class comparisons used the pool and {run["num_own"]} their '
             'own pair\'s (per class: `run_values` and `homogeneity_p` in analysis.json); '
             '`--run_variance=pairwise` gives the two-value form.')
  return [line]


def _caveats(stats: Mapping[str, Any]) -> list[str]:
  fewest = min(stats['images_per_class'])
  lines = [
      '## Method and caveats', '',
      f'- Test: {stats["test"]}. Seeds and test images are both treated as random, so a '
      'flagged class should move again in new runs on new images of the class; see '
      '`classbias_jax/stats.py` and docs/statistics.md for why this test and not a seed-only '
      'or image-only one, and for its false-flag rate and power in simulations.',
      _seed_caveat(stats), *_run_variance_caveat(stats), *dependence_markdown.method(stats),
      f'- Accuracy intervals: two-way bootstrap ({stats["num_bootstrap"]} draws) over seeds and '
      'over test images within each class; effect intervals are the test\'s t intervals, '
      'clipped to the effects accuracy allows (from minus the reference\'s accuracy to 100 '
      'minus it).',
      f'- q-values control the false discovery rate over one family per report '
      f'({_family(stats)}).',
      '- The most hurt class is the extreme of many noisy estimates, so its drop is inflated '
      '(winner\'s curse); the split-half shrinkage above says by how much. The worst-class '
      'curve is biased low for the same reason.',
      '- The halves of a split share their seeds: replication checks the image noise only.',
  ]
  if stats['reference']['chosen_by'] != 'given':
    lines.append('- The reference was picked as the value with the best mean accuracy, from '
                 'the same test images.')
  if 0 < fewest < 100:  # results.validate refuses a class without test images
    lines.append(f'- As few as {fewest} test images in a class: a binomial standard error of up '
                 f'to {50 / fewest ** 0.5:.1f} points per model on such a class.')
  return lines + ['']


def _figure(figures: Mapping[str, str], key: str, caption: str) -> list[str]:
  return [f'![{caption}]({FIGURES}/{figures[key]})', ''] if key in figures else []


def render(stats: Mapping[str, Any], figures: Mapping[str, str],
           config: Mapping[str, Any] | None = None, top_k: int = 5,
           study_section: list[str] = ()) -> str:
  """report.md's text from an analysis dict and {figure key: file name in figures/};
  study_section: lines placed after the conclusions (a fix study's arms, fix/report.py)."""
  lines = (_intro(stats, config or {}) + dependence_markdown.opening(stats)
           + _conclusions(stats) + list(study_section))
  lines += _summary(stats) + _figure(figures, 'class_dependence', 'class dependence')
  lines += ['## Per-class accuracy against the knob', '']
  lines += _figure(figures, 'per_class_accuracy', 'per-class accuracy')
  lines += ['## Class effects', ''] + _figure(figures, 'class_effects', 'class effects')
  lines += _effects(stats, top_k) + _power(stats)
  lines += ['## Mean vs worst classes', ''] + _figure(figures, 'summary_curves', 'summary')
  lines += _replication(stats)
  lines += ['## Confusion flow', ''] + _figure(figures, 'confusion_flow', 'confusion flow')
  lines += _flows(stats, top_k)
  lines += _figure(figures, 'flipped_images', 'images turned from right to wrong')
  if 'training_curves' in figures:
    lines += ['## Training curves', ''] + _figure(figures, 'training_curves', 'training curves')
  return '\n'.join(lines + _caveats(stats))


def tables(stats: Mapping[str, Any], top_k: int = 5) -> str:
  """The summary table and the most hurt/helped classes as markdown (for notebooks)."""
  lines = _conclusions(stats) + _summary(stats) + ['## Class effects', ''] + _effects(stats,
                                                                                    top_k)
  return '\n'.join(lines)


# ------------------------------------------------------------------------- writing
