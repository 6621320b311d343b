"""kill -9 at a random step of a run with step-level checkpoints: the same command resumes
to the results of an uninterrupted run."""
import os
import random
import signal
import subprocess
import time

from test_faults import COMMAND, ENV, ROOT, assert_same_results, finish
from test_faults import uninterrupted  # noqa: F401 (the fixture)

from classbias_jax.train import checkpoint

EVERY_STEPS = 20  # the run has 3 epochs of 84 steps; a save takes about 0.3 s
# The kill point is random but reproducible: set CLASSBIAS_KILL_SEED to replay a run.
SEED = int(os.environ.get('CLASSBIAS_KILL_SEED', '17'))


def cli(workdir: str) -> subprocess.Popen:
  args = [f'--workdir={workdir}', f'--config.train.checkpoint_every_steps={EVERY_STEPS}',
          '--config.train.checkpoint_minutes=0']
  return subprocess.Popen(COMMAND + args, cwd=ROOT, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def saved_steps(workdir: str) -> int:
  """Steps done at the newest whole checkpoint (0: none yet)."""
  path = checkpoint.latest(workdir)
  return int(os.path.basename(path).split('_')[-1]) if path else 0


def test_kill_9_at_a_random_step_resumes_to_the_same_results(tmp_path, uninterrupted):  # noqa: F811
  rng = random.Random(SEED)
  target, delay = rng.randrange(EVERY_STEPS, 200), rng.uniform(0.0, 0.4)
  print(f'seed {SEED}: kill -9 once step {target} is saved, {delay:.3f} s later')
  workdir = str(tmp_path / 'run')
  process = cli(workdir)
  deadline = time.time() + 240
  while saved_steps(workdir) < target and process.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  time.sleep(delay)
  assert process.poll() is None, 'the run ended before it could be killed'
  process.send_signal(signal.SIGKILL)
  returncode, _ = finish(process)
  assert returncode == -signal.SIGKILL
  resumed_from = saved_steps(workdir)
  print(f'killed; the newest checkpoint holds step {resumed_from}')
  assert resumed_from >= target

  returncode, err = finish(cli(workdir))
  assert returncode == 0, err
  assert 'resuming from the checkpoint after epoch' in err
  assert_same_results(workdir, uninterrupted)
  assert checkpoint.latest(workdir) is None
