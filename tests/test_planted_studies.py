"""The planted studies' runs (`runlocal`, 8 seeds each, kept in tests/data): the report
flags exactly the class family planted for each knob, as the study's docstring says
(configs/mixup.py, configs/smooth.py, configs/prune.py), and helps no class."""
from __future__ import annotations

import json
import pathlib

import pytest

from classbias_jax import configs
from classbias_jax.audit import analysis
from classbias_jax.results import load_results

DATA = pathlib.Path(__file__).parent / 'data'

# run folder -> the study that made it (the config file's default seeds: 8)
STUDY = {'mixup_runlocal': 'configs/mixup.py:runlocal',
         'cutmix_runlocal': 'configs/mixup.py:runlocal,cutmix',
         'smooth_runlocal': 'configs/smooth.py:runlocal',
         'prune_runlocal': 'configs/prune.py:runlocal'}
# run folder -> {swept value: the classes hurt there, absolutely and beyond the shift}
EXPECTED = {
    'mixup_runlocal': {0.4: [], 1.0: ['mix-blend']},
    'cutmix_runlocal': {0.4: ['mix-paste'], 1.0: ['mix-paste']},
    'smooth_runlocal': {0.1: ['none-rings'], 0.3: ['none-dots', 'none-rings']},
    'prune_runlocal': {0.5: [], 0.7: ['none-dots'], 0.9: ['none-dots', 'none-rings']},
}


@pytest.mark.parametrize('run', sorted(EXPECTED))
def test_the_planted_family_and_nothing_else(run):
  stored = json.loads((DATA / run / 'config.json').read_text())
  study = json.loads(configs.load(STUDY[run], root=str(DATA.parent.parent)).to_json())
  assert configs.fingerprint(stored) == configs.fingerprint(study), 'rerun the study'
  stats = analysis.analyze(load_results(str(DATA / run)), num_bootstrap=10, num_splits=1)
  assert stats['reference']['value'] == 0.0 and len(stats['seeds']) == 8
  found = {v['value']: v for v in stats['values'] if v['value'] != 0.0}
  assert sorted(found) == sorted(EXPECTED[run])
  for value, hurt in EXPECTED[run].items():
    assert sorted(found[value]['hurt']) == hurt, value
    assert sorted(found[value]['beyond_shift']['hurt']) == hurt, value
    assert found[value]['helped'] == [] and found[value]['beyond_shift']['helped'] == []
