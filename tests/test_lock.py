"""The lock (requirements.lock) and the check that an environment holds its versions."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from classbias_jax import versions
from classbias_jax.errors import UserError

LOCK = os.path.join(ROOT, 'requirements.lock')


def test_lock_pins_every_package_with_hashes():
  text = open(LOCK).read()
  pins = versions.read_lock(text)
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'numpy',
               'pytest', 'tensorboard', 'tensorboard-plugin-profile'):
    assert name in pins, name
  entries = text.split('\n    # via')  # uv writes each package's origins after its hashes
  assert all('--hash=sha256:' in entry for entry in entries[:-1])
  assert len(entries) - 1 >= len(pins)


def test_markers_decide_what_applies_here():
  text = '\n'.join([
      '# a comment',
      'Orbax_Checkpoint==1.2.3 \\',
      '    --hash=sha256:00',
      "colorama==0.4.6 ; sys_platform == 'win32' \\",
      "numpy==9.9.9 ; python_version >= '3.0' \\",
      '    # via foo',
  ])
  assert versions.read_lock(text) == {'orbax-checkpoint': '1.2.3', 'numpy': '9.9.9'}


def test_mismatches_name_the_package_and_both_versions():
  assert versions.mismatches({'numpy': np.__version__}) == []
  assert versions.mismatches({'numpy': '0.0.1', 'no-such-package': '1.0'}) == [
      'no-such-package: locked 1.0, installed nothing',
      f'numpy: locked 0.0.1, installed {np.__version__}']  # in name order


def test_check_lock_is_one_line(tmp_path, monkeypatch):
  lock = tmp_path / 'lock.txt'
  lock.write_text(f'numpy=={np.__version__} \\\n    --hash=sha256:00\n')
  monkeypatch.setattr(versions, 'unlocked', lambda pins: [])  # this environment has more
  assert versions.check_lock(str(lock)) == 1
  lock.write_text('numpy==0.0.1\n')
  with pytest.raises(UserError, match='differs from .* in 1 packages: numpy: locked 0.0.1'):
    versions.check_lock(str(lock))
  monkeypatch.undo()
  with pytest.raises(UserError, match='scipy: not locked, installed'):
    versions.check_lock(str(lock))
  out = subprocess.run([sys.executable, '-m', 'classbias_jax.versions', '--check', str(lock)],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
  with pytest.raises(UserError, match='cannot read'):
    versions.check_lock(str(tmp_path / 'missing.txt'))


def test_installed_names_the_numerical_stack():
  found = versions.installed()
  assert found['numpy'] == np.__version__
  assert found['python'] == '.'.join(map(str, sys.version_info[:3]))
