"""Built datasets on disk: tracklet metadata, random access to single frames, and the evaluation
set as a source of the chunk stream.

`python -m data_prep.build` writes, next to the TFDS shards, an index per view (`train`, `eval`)
holding each tracklet's metadata and each frame's shard and byte range (the format is
`data_prep.built`). Reading a frame is then a slice of a memory-mapped shard: a training clip
costs exactly its T small reads whatever the tracklet length, and pages come from the OS page
cache shared by every reader on the host. This needs `data_dir` on a file system that supports
mmap (local disk, NFS, a FUSE mount).
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


class BuiltTracklets:
  """The tracklets of one view of a built dataset (default the evaluation set), as a source of
  the chunk stream (`reid_jax.inference.chunks`): frames are read straight from the shards and
  decoded and resized in tf.data's thread pool (`reid_jax.data.frames`).

  Attributes:
    table: the TrackletTable; row i is tracklet i.
  """

  def __init__(self, data_dir: str, dataset: str, view: str = "eval"):
    self._index = built.load_index(data_dir, dataset, view)
    self.table = tracklet_table(self._index)
    self._reader = FrameReader(data_dir, dataset, self._index)
    self._root = built.dataset_dir(data_dir, dataset)

  @property
  def num_frames(self) -> np.ndarray:
    return self.table.num_frames

  def groups(self) -> list[np.ndarray]:
    # Random access: every tracklet is read on its own, so processes share them out freely.
    return list(np.arange(len(self.table)).reshape(-1, 1))

  def _frame_numbers(self, tracklets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Global frame numbers (rows of the index's frame arrays) of `positions [C, T]` within
    `tracklets [C]`."""
    return self._index["frame_start"][tracklets][:, None] + positions

  def clips(self, plan, height: int, width: int, block: int):
    from reid_jax.data import frames as frames_lib

    frames = self._frame_numbers(plan.tracklet, plan.positions)

    def blocks():
      for start in range(0, len(plan), block):
        ids = np.arange(start, min(start + block, len(plan)))
        yield ids, self._reader(frames[ids])

    try:
      yield from frames_lib.decode_chunks(blocks(), block=block, height=height, width=width)
    except frames_lib.UndecodableFrame as e:
      row = int(plan.tracklet[e.chunk])
      raise built.DamagedDataset(
        f"{self._root}: frame {int(plan.positions[e.chunk, e.slot])} of tracklet {row} (pid "
        f"{self.table.pids[row]}, camera {self.table.camids[row]}) does not decode ({e.reason}): "
        "the dataset is damaged (python -m data_prep.build --verify names what; rebuild it)"
      ) from None

  def frames(self, row: int, height: int, width: int, max_frames: int = 32) -> np.ndarray:
    """uint8 `[n, height, width, 3]`: the first `max_frames` frames of tracklet `row`, decoded
    and resized as the chunk stream does (for the report's pictures)."""
    from reid_jax.data import frames as frames_lib

    count = min(int(self.num_frames[row]), max_frames)
    jpegs = self._reader(self._frame_numbers(np.array([row]), np.arange(count)[None])[0])
    return np.stack([frames_lib.decode_frame(bytes(j), height, width).numpy() for j in jpegs])
