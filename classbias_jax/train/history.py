"""What the train loop collects per epoch, per model, and a checkpoint keeps."""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_dtypes
import numpy as np


@dataclasses.dataclass
class History:
  """What the train loop collects per epoch, per model [M] (and a checkpoint keeps)."""
  diverged: np.ndarray  # bool [M]: the loss became non-finite at some step
  curve_epochs: list = dataclasses.field(default_factory=list)
  eval_epochs: list = dataclasses.field(default_factory=list)
  curves: dict = dataclasses.field(default_factory=lambda: {
      'train_loss': [], 'train_accuracy': [], 'test_accuracy_curve': []})
  # A checkpoint taken inside an epoch: that epoch's per-step metrics so far, name ->
  # [steps, M], so the resumed epoch's means are those of an uninterrupted run.
  epoch_steps: dict = dataclasses.field(default_factory=dict)

  def to_json(self, epoch_steps: dict | None = None) -> dict[str, Any]:
    """The history as JSON, with `epoch_steps` (a save inside an epoch: that epoch's
    per-step metrics so far, name -> [steps, M]) in place of the field's own."""
    # float32, bfloat16 and float64 values survive JSON exactly.
    epoch_steps = self.epoch_steps if epoch_steps is None else epoch_steps
    return {'diverged': np.asarray(self.diverged).tolist(),
            'curve_epochs': list(self.curve_epochs), 'eval_epochs': list(self.eval_epochs),
            'curves': {k: [np.asarray(a).tolist() for a in v] for k, v in self.curves.items()},
            'epoch_steps': {k: {'dtype': np.asarray(a).dtype.name, 'values': np.asarray(
                a).tolist()} for k, a in epoch_steps.items()}}

  @classmethod
  def from_json(cls, meta: dict[str, Any]) -> 'History':
    steps = {k: np.asarray(v['values'], _dtype(v['dtype']))
             for k, v in meta.get('epoch_steps', {}).items()}
    return cls(np.asarray(meta['diverged'], bool), meta['curve_epochs'], meta['eval_epochs'],
               {k: [np.asarray(a) for a in v] for k, v in meta['curves'].items()}, steps)


def _dtype(name: str) -> np.dtype:
  """numpy's dtype of `name`, or ml_dtypes' (bfloat16, which numpy does not name)."""
  try:
    return np.dtype(name)
  except TypeError:
    return np.dtype(getattr(ml_dtypes, name))
