"""Runs one study: `python -m classbias_jax.main --config=configs/wd.py:runlocal --workdir=DIR`.

Errors a user can fix (a bad config file or flag, missing data, a full disk) are one line.
One run per workdir: a second one there fails at once, naming the first; a workdir
holding the finished results of another config is refused unless --overwrite (which
deletes that study's files first). SIGTERM or SIGINT during training saves a
checkpoint, prints one line saying how to resume and exits with 128 + the signal number
(143, 130); Ctrl-C before training exits with 130 and one line.
"""
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from classbias_jax import cli, configs
from classbias_jax.errors import UserError
from classbias_jax.tuning import hostmem

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Study config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for results, logs and figures.')
flags.mark_flags_as_required(['config', 'workdir'])
_OVERWRITE = flags.DEFINE_bool('overwrite', False, "Replace another config's results.")
# Several processes (docs/scale.md); TPU pods and SLURM need none of these.
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'Process 0 as host:port.')
_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, "This process's index.")


def _draw(arrays, workdir: str) -> None:
  """The run's one figure, drawn on the audit side: training never imports matplotlib."""
  from classbias_jax.audit import figures  # matplotlib: only once the results exist
  path = figures.per_class_accuracy(arrays, os.path.join(workdir, 'figures',
                                                         'per_class_accuracy.png'))
  print(f'wrote {path}', file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)  # library chatter hides the progress; -v 0 shows it
    # and XLA's (read as JAX loads; a parent that imported JAX has set it to 1)
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = max(os.environ.get('TF_CPP_MIN_LOG_LEVEL', ''), '2')
  # JAX starts its threads on import: after hostmem.setup (below), which may re-execute.
  from classbias_jax import train
  from classbias_jax.train import distributed, trainer
  try:
    distributed.initialize(_COORDINATOR.value, _PROCESSES.value, _PROCESS_ID.value,
                           configs.partner_timeout(_CONFIG.value.train))
    trainer.setup_compile_cache(_CONFIG.value)
    arrays = train.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
    distributed.leave()
    if distributed.is_lead():
      _draw(arrays, _WORKDIR.value)
  except UserError as e:
    distributed.end(f'error: {cli.one_line(e)}', 1)
  except trainer.Interrupted as e:
    distributed.leave()
    print(('\n' if sys.stderr.isatty() else '') + str(e), file=sys.stderr)  # after progress
    sys.exit(e.code)
  except Exception as e:
    if not distributed.several():
      raise
    distributed.fail(e)  # one line when a partner is gone mid-collective


if __name__ == '__main__':
  hostmem.setup()  # CLASSBIAS_MALLOC; may execute the process again, so before anything heavy
  cli.run(main)
