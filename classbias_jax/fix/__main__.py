"""CLI: a finished sweep -> SWEEP_DIR/policy.json (policy.py says how each policy is chosen).

  python -m classbias_jax.fix --workdir=runs/crop [--policy=per_class|protect] [--alpha=0.05]

Both policies are written; `--policy` names the one a fix study's `policy` arm trains.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from classbias_jax import cli, configs
from classbias_jax.audit import analysis
from classbias_jax.fix.policy import POLICIES, describe_policy, write_policy

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished sweep (results.npz).')
_POLICY = flags.DEFINE_enum('policy', 'per_class', POLICIES,
                            'The policy to recommend.')
_ALPHA = flags.DEFINE_float('alpha', analysis.ALPHA, 'q-value threshold of the evidence.')


def main(argv: list[str]) -> None:
  policy = cli.workdir_command(argv, _WORKDIR.value, lambda: write_policy(
      _WORKDIR.value, _POLICY.value, _ALPHA.value))
  print(describe_policy(policy), file=sys.stderr)
  print(os.path.join(_WORKDIR.value, configs.POLICY_FILE))


if __name__ == '__main__':
  app.run(main)
