"""The versions a run used (config.json's resolved.versions), and the check that an
environment holds exactly the versions of the lock (requirements.lock, which `./run`
installs):

  python -m classbias_jax.versions --check requirements.lock

prints one line and exits 1 when a locked package is missing or at another version, or
a package the lock does not list is installed.
"""
from __future__ import annotations

import importlib.metadata as metadata
import platform
import re
import sys

from packaging.markers import Marker

from classbias_jax.errors import UserError

# What decides the numbers of a run: the numerical stack first, then data and I/O.
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'numpy', 'scipy',
            'scikit-learn', 'tensorflow-datasets', 'ml-collections', 'absl-py', 'pillow',
            'matplotlib', 'tensorboard')
# Backend plugins of jaxlib (CUDA, ROCm, TPU): their names carry the version of the kernels.
PLUGIN = re.compile(r'^(jax[-_](cuda|rocm)|libtpu)')
# One locked package: `name==version`, an optional environment marker, then its hashes.
LOCKED = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$')


def normalise(name: str) -> str:
  """A distribution's name as registries compare them: 'Orbax_Checkpoint' -> 'orbax-checkpoint'."""
  return re.sub(r'[-_.]+', '-', name).lower()


def _version(name: str) -> str | None:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


def installed() -> dict[str, str | None]:
  """{name: version} of PACKAGES (None: not installed), jaxlib's backend plugins and the
  Python that ran: what config.json records under resolved.versions."""
  out = {'python': platform.python_version()}
  out.update({name: _version(name) for name in PACKAGES})
  for dist in metadata.distributions():
    name = normalise(dist.metadata['Name'] or '')
    if PLUGIN.match(name):
      out[name] = dist.version
  return out


def read_lock(text: str) -> dict[str, str]:
  """{normalised name: version} of a lock's packages whose marker holds here (a universal
  lock lists packages for other platforms too)."""
  pins = {}
  for line in text.splitlines():
    match = LOCKED.match(line.strip())
    if match is None:
      continue
    name, version, marker = match.groups()
    if marker and not Marker(marker).evaluate():
      continue
    pins[normalise(name)] = version
  return pins


def mismatches(pins: dict[str, str]) -> list[str]:
  """'name: locked X, installed Y' for every pinned package not installed at its version."""
  out = []
  for name, version in sorted(pins.items()):
    found = _version(name)
    if found != version:
      out.append(f'{name}: locked {version}, installed {found or "nothing"}')
  return out


def unlocked(pins: dict[str, str]) -> list[str]:
  """Installed distributions the lock does not list (pip itself and this package aside)."""
  names = {normalise(d.metadata['Name'] or '') for d in metadata.distributions()}
  return sorted(names - set(pins) - {'pip', 'classbias-jax', ''})


def check_lock(path: str) -> int:
  """The number of locked packages, all installed at their version and nothing else
  installed (pip freeze against the lock); UserError if not."""
  try:
    with open(path) as f:
      pins = read_lock(f.read())
  except (OSError, ValueError) as e:  # ValueError: bytes that are not text
    raise UserError(f'cannot read the lock {path}: {getattr(e, "strerror", None) or e}') from e
  if not pins:
    raise UserError(f'{path} pins no package')
  wrong = mismatches(pins) + [f'{name}: not locked, installed' for name in unlocked(pins)]
  if wrong:
    raise UserError(f'this environment differs from {path} in {len(wrong)} packages: '
                    + '; '.join(wrong) + ' (./run rebuilds .venv from the lock)')
  return len(pins)


def main(argv: list[str]) -> int:
  if len(argv) != 3 or argv[1] != '--check':
    print('usage: python -m classbias_jax.versions --check LOCK', file=sys.stderr)
    return 2
  try:
    count = check_lock(argv[2])
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{count} packages installed exactly as locked in {argv[2]}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
