"""Input modes: where the training images live while the models train.

  resident  the uint8 images live on device; each model gathers its own batches from its
            own per-epoch permutation. Seeds vary init, data order and augmentation.
  streamed  a grain pipeline (stream.py) shuffles the training split per epoch with
            `config.seed` and feeds host batches that all M models share; each model
            still augments them with its own keys. Seeds vary init and augmentation.
  auto      resident when the images fit RESIDENT_FRACTION of the device's memory.
"""
from __future__ import annotations

import jax

from classbias_jax import data
from classbias_jax.data import item_sources, stream

RESIDENT_FRACTION = 0.25  # of device memory; the rest holds M models' state and activations
RESIDENT_BYTES_CPU = 2 << 30  # where the device reports no memory size (XLA:CPU)


def resident_bytes(dataset) -> int:
  """Bytes the resident mode puts on each device: train, test and validation images."""
  splits = (dataset.train_images, dataset.test_images, dataset.val_images)
  return sum(images.nbytes for images in splits if images is not None)


def resolve_input_mode(mode: str, data_bytes: int, device=None) -> str:
  """'auto' -> 'resident' when `data_bytes` is under RESIDENT_FRACTION of the device's
  memory (RESIDENT_BYTES_CPU when it reports none, as on CPU), else 'streamed'.

  Under 'shard' every device holds a copy of the data, so one device's memory is the bound.
  """
  if mode != 'auto':
    return mode
  device = device or jax.devices()[0]
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # some backends do not implement memory_stats
    limit = None
  budget = RESIDENT_FRACTION * limit if limit else RESIDENT_BYTES_CPU
  return 'resident' if data_bytes < budget else 'streamed'


def train_stream(config, dataset, epochs: int, rows: tuple[int, int] | None = None):
  """The grain iterator of the streamed mode over the training split: `epochs` epochs of
  host batches {'image': uint8 [B, H, W, C], 'label': int32 [B]}, each epoch a fresh
  permutation seeded by `config.seed` (shared by all models), the last partial batch
  dropped (as the resident mode drops the end of each permutation).

  dataset: a data.Dataset (its arrays are streamed), or a stream.StreamedDataset from
  load_dataset, whose images the pipeline reads and decodes from the dataset's files.
  `data.workers` grain worker processes decode; the batches are the same. rows: (start,
  stop), the rows of each global batch this process reads (None: all; trainer.py).
  """
  if isinstance(dataset, data.Dataset):
    source = item_sources.ArraySource(dataset.train_images, dataset.train_labels)
    options = {'mode': 'L' if dataset.image_shape[-1] == 1 else 'RGB'}
  else:
    source, options = dataset.train_source, dataset.stream_options()
  return iter(stream.pipeline(source, batch_size=config.train.batch_size, seed=config.seed,
                              num_epochs=epochs, shuffle=True, drop_remainder=True,
                              num_workers=config.data.workers, rows=rows, **options))


def load_dataset(data_config, mode: str):
  """(dataset, input mode) for input mode `mode` ('auto', 'resident' or 'streamed').

  resident: data.load, every split decoded into host memory. streamed: data.open_streamed,
  which never decodes the training split up front (train_stream reads it lazily). auto:
  opened as for streamed, so that its resident size (N x H x W x C bytes) is known without
  decoding it, and loaded as for resident only when resolve_input_mode picks resident.
  """
  if mode == 'resident':
    return data.load(data_config), mode
  dataset = data.open_streamed(data_config)
  in_memory = isinstance(dataset, data.Dataset)
  mode = resolve_input_mode(mode, resident_bytes(dataset) if in_memory
                            else dataset.resident_bytes())
  if mode == 'resident' and not in_memory:
    dataset = data.load(data_config)
  return dataset, mode
