"""Each process of a streamed job reads only its rows of each global batch: the pipeline's
rows are the global batch's, and a process's rows are those its devices hold."""
import numpy as np
import pytest

from classbias_jax.train import distributed
from classbias_jax.data import item_sources, stream


def batches(rows=None, **kwargs):
  rng = np.random.default_rng(0)
  source = item_sources.ArraySource(rng.integers(0, 256, (50, 4, 4, 1), np.uint8),
                              rng.integers(0, 10, 50))
  return iter(stream.pipeline(source, batch_size=8, mode='L', seed=3, num_epochs=2,
                              num_threads=1, rows=rows, **kwargs))


def test_a_process_reads_its_rows_of_every_global_batch_and_resumes_there():
  whole, part = list(batches()), list(batches(rows=(2, 6)))
  assert len(whole) == len(part) == 12  # 6 batches an epoch, 2 epochs
  for got, want in zip(part, whole):
    np.testing.assert_array_equal(got['image'], want['image'][2:6])
    np.testing.assert_array_equal(got['label'], want['label'][2:6])
  it = batches(rows=(2, 6))
  for _ in range(7):
    next(it)
  resumed = batches(rows=(2, 6))
  resumed.set_state(it.get_state())
  np.testing.assert_array_equal(next(resumed)['image'], whole[7]['image'][2:6])


def test_a_source_item_outside_the_rows_is_never_read():
  read = []

  class Source(item_sources.ArraySource):
    def __getitem__(self, i):
      read.append(i)
      return super().__getitem__(i)

  source = Source(np.zeros((16, 2, 2, 1), np.uint8), np.arange(16) % 3)
  list(stream.pipeline(source, batch_size=8, mode='L', shuffle=False, num_epochs=1,
                       num_threads=1, rows=(4, 8)))
  assert sorted(read) == [4, 5, 6, 7, 12, 13, 14, 15]


class Layout:
  """Stands for a sharding: the rows of a [size] array each of this process's devices holds."""

  def __init__(self, *spans):
    self.spans = spans

  def addressable_devices_indices_map(self, shape):
    return {f'device{i}': (slice(a, b),) for i, (a, b) in enumerate(self.spans)}


@pytest.mark.parametrize('spans, rows', [
    (((0, 16), (16, 32)), (0, 32)),  # data axis across processes: the first half
    (((48, 64), (32, 48)), (32, 64)),  # the second half, devices in any order
    (((0, 32), (0, 32)), (0, 32)),  # a model axis within the process repeats rows
    (((0, 64), (0, 64)), None),  # the whole batch on each device (replicated): all
    (((0, 16), (32, 48)), None),  # two blocks: read all
])
def test_a_process_reads_the_rows_its_devices_hold(monkeypatch, spans, rows):
  assert distributed.local_rows(Layout(*spans), 64) is None  # one process reads all
  monkeypatch.setattr(distributed.jax, 'process_count', lambda: 2)
  assert distributed.local_rows(Layout(*spans), 64) == rows
  assert distributed.local_rows(None, 64) is None
