"""One chunk stream: T-frame chunks of many tracklets per fixed-shape batch, from any source.

A tracklet of n frames is read as ceil(n / T) consecutive chunks of T frames. The last one, with
r < T real frames, repeats them cyclically (its own frames, so no other tracklet leaks in), and
`frame_mask` marks the r real ones. Chunks of many tracklets fill each batch, so memory depends
on the batch size only, never on tracklet length; a tracklet's feature is the mean of its chunk
features (`reid_jax.inference.features`).

Sources. A `TrackletSource` is anything holding tracklets: the evaluation set of a built dataset
(`reid_jax.data.tracklets.BuiltTracklets`), a user's tracklet folders or videos with tracks
(`reid_jax.footage.sources.FootageTracklets`). It says how long each tracklet is, which
tracklets are read together (the tracks of one video come from one decoding pass), and reads the
clips of planned chunks.

Processes. Groups of tracklets are shared out whole, balancing the number of chunks; each process
reads only its own groups, and every process runs the same number of batches of
`batch_size / process_count` rows, the last ones padded (`tracklet` -1, `valid` False), so the
global batches line up across processes. The sharing out is a pure function of the groups'
chunk counts: every process computes every process's share, with no communication.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Protocol

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
  """The chunks to read, in reading order.

  Attributes:
    tracklet: [C] row of each chunk's tracklet in its source.
    positions: [C, T] frame positions within the tracklet, the last chunk's repeating.
    frame_mask: [C, T] the real (not repeated) frames.
  """

  tracklet: np.ndarray
  positions: np.ndarray
  frame_mask: np.ndarray

  def __len__(self) -> int:
    return len(self.tracklet)

  @property
  def num_frames(self) -> int:
    return self.positions.shape[1]


def chunks_per_tracklet(num_frames: np.ndarray, T: int) -> np.ndarray:
  return -(-np.asarray(num_frames, np.int64) // T)


def plan_chunks(rows: np.ndarray, num_frames: np.ndarray, T: int) -> ChunkPlan:
  """Every frame of tracklets `rows` (in that order) in consecutive chunks of T; `num_frames` is
  the length of every row of the source."""
  rows = np.asarray(rows, np.int64)
  lengths = np.asarray(num_frames, np.int64)[rows]
  counts = chunks_per_tracklet(lengths, T)
  order = np.repeat(np.arange(len(rows)), counts)
  first_chunk = np.cumsum(counts) - counts
  start = (np.arange(len(order)) - first_chunk[order]) * T
  real = np.minimum(lengths[order] - start, T)
  return ChunkPlan(
    tracklet=rows[order].astype(np.int32),
    positions=start[:, None] + np.arange(T)[None, :] % real[:, None],
    frame_mask=np.arange(T)[None, :] < real[:, None],
  )


class TrackletSource(Protocol):
  """What the chunk stream reads (see the module docstring)."""

  @property
  def num_frames(self) -> np.ndarray:
    """[N] the tracklets' lengths; rows 0..N-1 are the tracklets."""

  def groups(self) -> Sequence[np.ndarray]:
    """Rows read together, in reading order: each group goes whole to one process."""

  def clips(
    self, plan: ChunkPlan, height: int, width: int, block: int
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`(chunk indices [n] into plan, clips uint8 [n, T, height, width, 3])` for every chunk
    of `plan` (whose tracklets are whole groups, in group order) exactly once, in any order;
    `n = block` where the source reads in blocks (a whole batch, passed on without a copy)."""


def share_out(groups: Sequence[np.ndarray], chunk_counts: np.ndarray, process_count: int):
  """Per process, the indices of its groups: each group goes to the process with the fewest
  chunks so far (the lowest index on ties), so every process computes the same assignment."""
  loads = np.zeros(process_count, np.int64)
  assigned: list[list[int]] = [[] for _ in range(process_count)]
  for g, rows in enumerate(groups):
    p = int(np.argmin(loads))
    assigned[p].append(g)
    loads[p] += int(chunk_counts[rows].sum())
  return assigned


@dataclasses.dataclass(frozen=True)
class LocalPlan:
  """What this process reads: its chunks and how many batches every process runs."""

  plan: ChunkPlan
  rows_per_batch: int
  num_batches: int


def local_plan(
  source: TrackletSource,
  *,
  num_frames: int,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> LocalPlan:
  """A process's share of `source` (see the module docstring); `batch_size` is global. The
  process defaults to this one (`jax.process_index()` of `jax.process_count()`)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} does not divide over {process_count} processes")
  groups = list(source.groups())
  counts = chunks_per_tracklet(source.num_frames, num_frames)
  shares = share_out(groups, counts, process_count)
  per_batch = batch_size // process_count
  most = max(sum(int(counts[groups[g]].sum()) for g in share) for share in shares)
  mine = shares[process_index]
  rows = np.concatenate([groups[g] for g in mine]) if mine else np.zeros(0, np.int64)
  plan = plan_chunks(rows, source.num_frames, num_frames)
  return LocalPlan(plan, per_batch, -(-most // per_batch))


def chunk_batches(
  source: TrackletSource,
  *,
  num_frames: int,
  height: int,
  width: int,
  batch_size: int,
  progress=None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches of `source`'s chunks: `clips uint8 [b, T, H, W, 3]`, `tracklet
  int32 [b]` (row in the source, -1 for padding) and `valid bool [b]`, with `b = batch_size /
  process_count`; the same number of batches on every process. `progress` (a tqdm bar) is
  reset to this process's number of real frames, then told those of each chunk read. The
  process defaults to this one (tests read other processes' shares)."""
  local = local_plan(
    source,
    num_frames=num_frames,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  plan, b = local.plan, local.rows_per_batch
  real_frames = plan.frame_mask.sum(axis=1)
  if progress is not None and progress.total != int(real_frames.sum()):
    progress.reset(total=int(real_frames.sum()))
  shape = (b, num_frames, height, width, 3)

  def empty():
    return np.zeros(shape, np.uint8), np.full((b,), -1, np.int32)

  clips, rows = empty()
  filled = emitted = read = 0
  for chunk_ids, chunk_clips in source.clips(plan, height, width, b) if len(plan) else ():
    read += len(chunk_ids)
    if progress is not None:
      progress.update(int(real_frames[chunk_ids].sum()))
    if filled == 0 and len(chunk_ids) == b:  # a whole batch as it came: no copy
      yield dict(clips=chunk_clips, tracklet=plan.tracklet[chunk_ids], valid=np.ones(b, bool))
      emitted += 1
      continue
    start = 0
    while start < len(chunk_ids):
      take = min(b - filled, len(chunk_ids) - start)
      clips[filled : filled + take] = chunk_clips[start : start + take]
      rows[filled : filled + take] = plan.tracklet[chunk_ids[start : start + take]]
      filled, start = filled + take, start + take
      if filled == b:
        yield dict(clips=clips, tracklet=rows, valid=rows >= 0)
        emitted += 1
        clips, rows = empty()
        filled = 0
  if read != len(plan):  # a source that skipped or repeated chunks: a bug, never a result
    raise RuntimeError(f"the source read {read} chunks of the {len(plan)} planned")
  if filled:
    yield dict(clips=clips, tracklet=rows, valid=rows >= 0)
    emitted += 1
  for _ in range(local.num_batches - emitted):
    clips, rows = empty()
    yield dict(clips=clips, tracklet=rows, valid=np.zeros(b, bool))
