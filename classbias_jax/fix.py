"""CLI: a finished sweep -> SWEEP_DIR/policy.json (policy.py says how each policy is chosen).

  python -m classbias_jax.fix --workdir=runs/crop [--policy=per_class|protect] [--alpha=0.05]

Both policies are written; `--policy` names the one a fix study's `policy` arm trains.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from classbias_jax import analysis, arms, policy as policy_lib
from classbias_jax.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished sweep (results.npz).')
_POLICY = flags.DEFINE_enum('policy', 'per_class', policy_lib.POLICIES,
                            'The policy to recommend.')
_ALPHA = flags.DEFINE_float('alpha', analysis.ALPHA, 'q-value threshold of the evidence.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required')
  try:
    policy = policy_lib.write(_WORKDIR.value, _POLICY.value, _ALPHA.value)
  except UserError as e:
    print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
    sys.exit(1)
  print(policy_lib.summary(policy), file=sys.stderr)
  print(os.path.join(_WORKDIR.value, arms.POLICY_FILE))


if __name__ == '__main__':
  app.run(main)
