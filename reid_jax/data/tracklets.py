"""Built datasets on disk: tracklet metadata and random access to single frames.

`python -m data_prep.build` writes, next to the TFDS shards, an index per view (`train`, `eval`)
holding each tracklet's metadata and each frame's shard and byte range (the format is
`data_prep.built`). Reading a frame is then a
slice of a memory-mapped shard: a training clip costs exactly its T small reads whatever the
tracklet length, and pages come from the OS page cache shared by every reader on the host. This
needs `data_dir` on a file system that supports mmap (local disk, NFS, a FUSE mount).
"""

from __future__ import annotations

import dataclasses
import mmap
import os

import numpy as np

from data_prep import built


@dataclasses.dataclass(frozen=True, eq=False)
class TrackletTable:
  """Metadata of one evaluation set; row i is tracklet i of the eval iterator.

  Attributes (each `[N]` unless noted):
      pids: person ids (MARS: -1 junk, 0 distractor).
      camids: camera ids, 1-based.
      tracklet_ids: tracklet ids from the dataset's file names.
      num_frames: tracklet lengths.
      is_query: query tracklets, as the dataset's layout reader flagged them.
      person_split_role: int8 `[N, S]` for datasets with S person splits, per split 0 = train
          person, 1 = test person; None for the others.
  """

  pids: np.ndarray
  camids: np.ndarray
  tracklet_ids: np.ndarray
  num_frames: np.ndarray
  is_query: np.ndarray
  person_split_role: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.pids)


def tracklet_table(index: dict[str, np.ndarray]) -> TrackletTable:
  """The TrackletTable of an index."""
  splits = index["person_split_role"]
  return TrackletTable(
    pids=index["pids"],
    camids=index["camids"],
    tracklet_ids=index["tracklet_ids"],
    num_frames=np.diff(index["frame_start"]),
    is_query=index["roles"] == built.ROLE_QUERY,
    person_split_role=splits if splits.shape[1] else None,
  )


class FrameReader:
  """The encoded JPEG bytes of frames, by global frame number in an index."""

  def __init__(self, data_dir: str, dataset: str, index: dict[str, np.ndarray]):
    root = built.finished_dir(data_dir, dataset)
    self._paths = [os.path.join(root, str(s)) for s in index["shards"]]
    self._maps: list[mmap.mmap | None] = [None] * len(self._paths)
    self._shard = index["frame_shard"]
    self._offset = index["frame_offset"]
    self._end = index["frame_offset"] + index["frame_length"]

  def _map(self, shard: int) -> mmap.mmap:
    # Opened on first use, so a process maps only the shards its rows touch.
    if self._maps[shard] is None:
      with open(self._paths[shard], "rb") as f:
        self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return self._maps[shard]

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """Object array of `bytes`, the shape of `frames` (global frame numbers)."""
    out = np.empty(frames.shape, object)
    flat = out.reshape(-1)
    for i, frame in enumerate(frames.reshape(-1)):
      flat[i] = self._map(self._shard[frame])[self._offset[frame] : self._end[frame]]
    return out
