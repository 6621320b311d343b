"""The on-disk results contract (docs/architecture.md): the only module that writes results,
and the assembly of a finished run's arrays into it.

`WORKDIR/results.npz` holds, for V sweep values, S seeds, C classes, N test images:
  per_class_accuracy float32 [V, S, C]   mean_accuracy float32 [V, S]
  test_labels int32 [N]                  test_predictions int32 [V, S, N]
  sweep_name str                         sweep_values float64 [V]
  seeds int64 [S]                        class_names str [C]
optional:
  val_labels int32 [Nv], val_predictions int32 [V, S, Nv]
  value_names str [V]                    (a fix study: each sweep value's arm, arms.py)
  diverged bool [V, S]                   (a model whose loss became non-finite)
  sparsity float32 [V, S]                (a run that prunes: each model's fraction of
                                          its conv and dense weights that are exactly 0)
  curve_epochs int32 [E]; train_loss, train_accuracy float32 [V, S, E] (per-epoch means)
  eval_epochs int32 [E']; test_accuracy_at_eval float32 [V, S, E'] (when train.eval_every)
Files are written to a temporary name in the same folder and renamed into place, so a
reader sees a whole file or none.
"""
from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from classbias_jax import files
from classbias_jax.errors import ResultsError

RESULTS_FILE = 'results.npz'
REQUIRED = ('per_class_accuracy', 'mean_accuracy', 'test_labels', 'test_predictions',
            'sweep_name', 'sweep_values', 'seeds', 'class_names')


def class_accuracy(correct: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Accuracy of each class: correct bool [..., N] (model right on test image i), labels [N]
  -> float64 [..., C]. A class without test images gets NaN."""
  labels, correct = np.asarray(labels), np.asarray(correct)
  lead = correct.shape[:-1]
  flat = correct.reshape(-1, labels.size).astype(np.float64)
  rows = flat.shape[0]
  index = (np.arange(rows)[:, None] * num_classes + labels[None, :]).ravel()
  hits = np.bincount(index, weights=flat.ravel(), minlength=rows * num_classes)
  with np.errstate(invalid='ignore', divide='ignore'):
    accuracy = hits.reshape(rows, num_classes) / np.bincount(labels, minlength=num_classes)
  return accuracy.reshape(lead + (num_classes,))


def confusion_matrices(labels: np.ndarray, predictions: np.ndarray,
                       num_classes: int) -> np.ndarray:
  """Counts: labels [N], predictions [..., N] -> int64 [..., C, C] (row = true class)."""
  predictions = np.asarray(predictions)
  lead = predictions.shape[:-1]
  flat = predictions.reshape(-1, predictions.shape[-1])
  out = np.zeros((flat.shape[0], num_classes, num_classes), np.int64)
  index = np.asarray(labels) * num_classes
  for i, row in enumerate(flat):
    out[i] = np.bincount(index + row, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)
  return out.reshape(*lead, num_classes, num_classes)


def _expected_shapes(arrays: dict[str, np.ndarray], source: str) -> dict[str, tuple]:
  """The shape each array present must have, from per_class_accuracy [V, S, C] and
  test_labels [N]."""
  v, s, c = arrays['per_class_accuracy'].shape
  n = arrays['test_labels'].shape
  expected = {'mean_accuracy': (v, s), 'test_predictions': (v, s) + n, 'sweep_values': (v,),
              'seeds': (s,), 'class_names': (c,)}
  if 'val_labels' in arrays or 'val_predictions' in arrays:
    expected['val_predictions'] = (v, s) + arrays['val_labels'].shape
  for key in ('diverged', 'sparsity', 'value_names'):
    if key in arrays:
      expected[key] = (v,) if key == 'value_names' else (v, s)
  for key, epochs in (('train_loss', 'curve_epochs'), ('train_accuracy', 'curve_epochs'),
                      ('test_accuracy_at_eval', 'eval_epochs')):
    if key in arrays:
      if epochs not in arrays:
        raise ResultsError(f'{source}: {key} without {epochs}')
      expected[key] = (v, s) + arrays[epochs].shape
  return expected


def _check_class_indices(arrays: dict[str, np.ndarray], source: str, c: int) -> None:
  for key in ('test_labels', 'test_predictions', 'val_labels', 'val_predictions'):
    values = arrays.get(key)
    if values is None or not values.size:
      continue
    if values.dtype.kind not in 'iu':
      raise ResultsError(f'{source}: {key} must be integer class indices, got {values.dtype}')
    if values.min() < 0 or values.max() >= c:
      raise ResultsError(f'{source}: {key} outside 0..{c - 1} (C={c} classes), e.g. '
                         f'{values.min() if values.min() < 0 else values.max()}')


# The kind of each array (numpy dtype kinds): numbers, or text.
_KINDS = {'per_class_accuracy': 'fiu', 'mean_accuracy': 'fiu', 'sweep_values': 'fiu',
          'seeds': 'iu', 'sweep_name': 'U', 'class_names': 'U', 'value_names': 'U',
          'diverged': 'b'}


def _check_kinds(arrays: dict[str, np.ndarray], source: str) -> None:
  for key, kinds in _KINDS.items():
    if key in arrays and arrays[key].dtype.kind not in kinds:
      what = 'text' if kinds == 'U' else 'booleans' if kinds == 'b' else 'numbers'
      raise ResultsError(f'{source}: {key} must be {what}, got {arrays[key].dtype}')


def validate(arrays: dict[str, np.ndarray], source: str = 'results') -> None:
  """Raises ResultsError when required arrays are missing or their shapes disagree."""
  missing = [k for k in REQUIRED if k not in arrays]
  if missing:
    raise ResultsError(f'{source} lacks {", ".join(missing)}: not a classbias_jax results file')
  _check_kinds(arrays, source)
  acc = arrays['per_class_accuracy']
  if acc.ndim != 3:
    raise ResultsError(f'{source}: per_class_accuracy must be [V, S, C], got shape {acc.shape}')
  v, s, c = acc.shape
  for key, shape in _expected_shapes(arrays, source).items():
    if arrays[key].shape != shape:
      raise ResultsError(f'{source}: {key} has shape {arrays[key].shape}, expected {shape} '
                         f'(V={v} sweep values, S={s} seeds, C={c} classes)')
  if arrays['test_labels'].ndim != 1:
    raise ResultsError(f'{source}: test_labels must be [N], got shape '
                       f'{arrays["test_labels"].shape}')
  _check_class_indices(arrays, source, c)
  _check_classes(arrays, source, c)


def _check_classes(arrays: dict[str, np.ndarray], source: str, c: int) -> None:
  """At least two classes, each with test images: else no per-class accuracy compares."""
  if c < 2:
    raise ResultsError(f'{source}: {c} class; a per-class audit needs at least two')
  counts = np.bincount(arrays['test_labels'].astype(np.int64), minlength=c)
  if (counts == 0).any():
    empty = [str(arrays['class_names'][k]) for k in np.flatnonzero(counts == 0)]
    raise ResultsError(f'{source}: no test images of class {", ".join(empty[:5])}'
                       f'{", ..." * (len(empty) > 5)}: its accuracy cannot be measured')


def save_results(workdir: str, arrays: dict[str, Any]) -> str:
  """Validates and writes WORKDIR/results.npz atomically; returns its path."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  validate(arrays, 'results to save')
  path = os.path.join(workdir, RESULTS_FILE)
  files.atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
  return path


def load_results(workdir: str) -> dict[str, np.ndarray]:
  """Loads and validates WORKDIR/results.npz (no pickles); scalars come back as 0-d arrays.

  Adds `num_classes` (int); confusion matrices come from `confusion_matrices` on demand
  (int64 [V, S, C, C] is large for C = 1000).
  """
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.isfile(path):
    raise ResultsError(f'no {RESULTS_FILE} in {workdir}: run classbias_jax.main there first')
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ResultsError(f'{path} is unreadable (truncated or not an .npz file): {e}') from None
  validate(arrays, path)
  c = arrays['class_names'].shape[0]
  arrays['num_classes'] = c
  return arrays


def assemble(sweep, dataset, predictions: np.ndarray, history,
             val_predictions: np.ndarray | None = None,
             value_names: list[str] | None = None) -> dict[str, np.ndarray]:
  """The arrays of results.npz from a finished run: sweep (plan.Sweep), dataset (test and
  validation labels, class names), predictions int32 [M, N] on the test split, the loop's
  history (train.history.History), validation predictions [M, Nv] when the dataset has a validation split, and
  the names of the sweep values (a fix study's arms)."""
  labels, unflatten = dataset.test_labels, sweep.unflatten
  stack = lambda key: unflatten(np.stack(history.curves[key], 1)).astype(np.float32)
  arrays = {
      'test_labels': labels.astype(np.int32),
      'test_predictions': unflatten(predictions),
      'per_class_accuracy': unflatten(class_accuracy(
          predictions == labels, labels, dataset.num_classes).astype(np.float32)),
      'mean_accuracy': unflatten((predictions == labels).mean(1)).astype(np.float32),
      'sweep_name': np.asarray(sweep.name),
      'sweep_values': sweep.values,
      'seeds': sweep.seeds,
      'class_names': np.asarray(dataset.class_names),
      'diverged': unflatten(history.diverged),
      'curve_epochs': np.asarray(history.curve_epochs, np.int32),
      'train_loss': stack('train_loss'),
      'train_accuracy': stack('train_accuracy'),
  }
  if history.eval_epochs:
    arrays['eval_epochs'] = np.asarray(history.eval_epochs, np.int32)
    arrays['test_accuracy_at_eval'] = stack('test_accuracy_curve')
  if value_names is not None:
    arrays['value_names'] = np.asarray(value_names)
  if val_predictions is not None:
    arrays['val_labels'] = dataset.val_labels.astype(np.int32)
    arrays['val_predictions'] = unflatten(val_predictions)
  return arrays
