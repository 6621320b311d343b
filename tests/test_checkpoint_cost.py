"""The checkpoint-cost entry point on a tiny model: one JSON record, both epoch modes."""
import json
import os

from conftest import ROOT

from classbias_jax.tuning import checkpoint_cost

TINY = (f'--config={os.path.join(ROOT, "configs", "wd.py")}:runlocal,seeds=1,epochs=1',
        '--set=model.name=tiny', '--set=sweep.values=(0.0,0.01)', '--saves=2')


def test_a_measured_and_an_estimated_epoch(tmp_path, capsys):
  measured = checkpoint_cost.main([*TINY, f'--workdir={tmp_path / "a"}'])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == measured
  assert measured['models'] == 2 and measured['saves'] == 2
  assert measured['epoch'].startswith('measured')
  # The saves stay on disk as a run's do: the newest two (orbax may compress the state).
  assert measured['checkpoint_bytes'] > 0 and measured['state_bytes'] > 0
  assert sorted(os.listdir(tmp_path / 'a' / 'checkpoint')) == ['step_000000021',
                                                               'step_000000042']
  estimated = checkpoint_cost.main([*TINY, '--stand-in=8,7,640', '--steps=1'])
  assert estimated['epoch'].startswith('estimated: 1 steps on random 8x8 images x 10 steps')
  for record in (measured, estimated):
    assert record['save_s'] > 0 and record['epoch_s'] > 0
    assert record['save_percent_of_epoch'] == 100 * record['save_s'] / record['epoch_s']
