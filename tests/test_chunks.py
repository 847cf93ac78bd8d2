"""The chunk stream: its plan, the sharing out over processes, fixed-shape masked batches from
sources that read in blocks or in any order."""

import numpy as np
import pytest

from reid_jax.inference import chunks

H, W = 2, 3


class FakeSource:
  """Tracklets whose frames carry (row, position) in channels 0 and 1. `order` reads the plan's
  chunks in reverse, one at a time (as a video's tracks come out of one decoding pass);
  `grouped` reads rows in pairs."""

  def __init__(self, lengths, *, reverse=False, grouped=False, repeat_first=False):
    self.num_frames = np.asarray(lengths)
    self.reverse, self.grouped, self.repeat_first = reverse, grouped, repeat_first

  def groups(self):
    rows = np.arange(len(self.num_frames))
    return np.split(rows, range(2, len(rows), 2)) if self.grouped else list(rows.reshape(-1, 1))

  def _clip(self, plan, chunk):
    clip = np.zeros((plan.num_frames, H, W, 3), np.uint8)
    clip[..., 0] = plan.tracklet[chunk]
    clip[..., 1] = plan.positions[chunk][:, None, None]
    return clip

  def clips(self, plan, height, width, block):
    assert (height, width) == (H, W)
    ids = np.arange(len(plan))
    if self.reverse:
      for chunk in ids[::-1]:
        yield np.array([chunk]), self._clip(plan, chunk)[None]
      return
    if self.repeat_first:
      ids = np.concatenate([ids[:1], ids])
    for start in range(0, len(ids), block):
      part = ids[start : start + block]
      yield part, np.stack([self._clip(plan, c) for c in part])


def _batches(source, **kwargs):
  args = dict(num_frames=4, height=H, width=W, batch_size=4)
  return list(chunks.chunk_batches(source, **{**args, **kwargs}))


def _chunks_read(batches):
  """(row, positions) of every valid chunk, from the pixels."""
  out = []
  for batch in batches:
    for row, clip, valid in zip(batch["tracklet"], batch["clips"], batch["valid"]):
      if valid:
        assert (clip[..., 0] == row).all()
        out.append((int(row), tuple(clip[:, 0, 0, 1].tolist())))
  return sorted(out)


def test_plan_chunks_repeats_the_last_chunk_cyclically():
  plan = chunks.plan_chunks(np.array([2, 0, 1]), np.array([3, 8, 17]), 8)
  np.testing.assert_array_equal(plan.tracklet, [2, 2, 2, 0, 1])
  np.testing.assert_array_equal(plan.frame_mask.sum(1), [8, 8, 1, 3, 8])
  np.testing.assert_array_equal(plan.positions[2], [16] * 8)
  np.testing.assert_array_equal(plan.positions[3], [0, 1, 2, 0, 1, 2, 0, 1])  # its own frames


def test_share_out_balances_chunks_and_keeps_groups_whole():
  groups = [np.array([0]), np.array([1, 2]), np.array([3]), np.array([4])]
  counts = np.array([5, 1, 1, 3, 2])
  shares = chunks.share_out(groups, counts, 2)
  # 0 (5 chunks) -> p0; [1, 2] (2) -> p1; 3 (3) -> p1; 4 (2) -> p0 (5 vs 5: the lower index).
  assert shares == [[0, 3], [1, 2]]
  assert chunks.share_out(groups, counts, 2) == shares  # a pure function of its arguments


@pytest.mark.parametrize("reverse", [False, True])
def test_every_chunk_once_in_fixed_shape_batches(reverse):
  source = FakeSource([3, 8, 17, 1, 4], reverse=reverse)
  batches = _batches(source)
  plan = chunks.plan_chunks(np.arange(5), source.num_frames, 4)
  assert len(batches) == -(-len(plan) // 4)
  for batch in batches:
    assert batch["clips"].shape == (4, 4, H, W, 3) and batch["tracklet"].shape == (4,)
    np.testing.assert_array_equal(batch["valid"], batch["tracklet"] >= 0)
  expected = sorted((int(r), tuple(p.tolist())) for r, p in zip(plan.tracklet, plan.positions))
  assert _chunks_read(batches) == expected


def test_processes_run_the_same_number_of_batches_and_read_disjoint_groups():
  source = FakeSource([3, 30, 2, 9, 4, 6], grouped=True)
  whole = _batches(source)
  parts = [_batches(source, batch_size=4, process_index=i, process_count=2) for i in range(2)]
  assert len(parts[0]) == len(parts[1])
  assert all(b["clips"].shape[0] == 2 for part in parts for b in part)
  assert _chunks_read(parts[0] + parts[1]) == _chunks_read(whole)
  rows = [{r for r, _ in _chunks_read(part)} for part in parts]
  assert rows == [{0, 1}, {2, 3, 4, 5}]  # the groups [0, 1] (9 chunks) and [2, 3], [4, 5]
  padding = parts[1][-1]
  assert not padding["valid"].any() and (padding["tracklet"] == -1).all()


def test_progress_counts_the_real_frames_of_this_process():
  class Bar:
    total = None

    def reset(self, total):
      self.total, self.n = total, 0

    def update(self, n):
      self.n += n

  bar = Bar()
  _batches(FakeSource([3, 8, 17]), progress=bar)
  assert bar.total == bar.n == 28


def test_a_source_that_reads_a_chunk_twice_is_an_error():
  with pytest.raises(RuntimeError, match="read 6 chunks of the 5 planned"):
    _batches(FakeSource([3, 8, 5], repeat_first=True))


def test_a_batch_size_that_does_not_divide_over_the_processes_is_refused():
  with pytest.raises(ValueError, match="batch_size 5 does not divide over 2 processes"):
    _batches(FakeSource([3]), batch_size=5, process_index=0, process_count=2)
