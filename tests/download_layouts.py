"""Tiny datasets in the iLIDS-VID, PRID2011 and DukeMTMC-VideoReID download layouts.

MARS-layout data comes from `data_prep.synthetic`. These writers take the frames to write, so a
test can encode what it wants to check in the pixels (e.g. the frame number as the grey level).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import scipy.io
from PIL import Image

# frame(pid, camid, index in tracklet) -> [H, W, 3] uint8
FrameFn = Callable[[int, int, int], np.ndarray]


def grey_frame(height: int = 16, width: int = 8) -> FrameFn:
  """Frames whose grey level encodes their index (3 * index), readable back after decoding."""
  return lambda pid, camid, i: np.full((height, width, 3), 3 * i, np.uint8)


def _save(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


def write_ilidsvid(
  root: str, num_people: int, frames: FrameFn, lengths: Callable[[int, int], int], seed: int = 0
) -> list[np.ndarray]:
  """Writes `<root>/i-LIDS-VID/` with people person001.. in cam1 and cam2 and 10 splits.

  Returns the `ls_set` rows written (1-based person indices; first half test people).
  """
  base = os.path.join(root, "i-LIDS-VID")
  for person in range(1, num_people + 1):
    for cam in (1, 2):
      for i in range(lengths(person, cam)):
        # Frame numbers do not start at 0 and are zero-padded, as in the download.
        name = f"cam{cam}_person{person:03d}_{100 + 7 * i:05d}.png"
        _save(
          os.path.join(base, "sequences", f"cam{cam}", f"person{person:03d}", name),
          frames(person, cam, i),
        )
  rng = np.random.default_rng(seed)
  ls_set = np.stack([rng.permutation(num_people) + 1 for _ in range(10)]).astype(np.float64)
  os.makedirs(os.path.join(base, "train-test people splits"))
  scipy.io.savemat(
    os.path.join(base, "train-test people splits", "train_test_splits_ilidsvid.mat"),
    {"ls_set": ls_set},
  )
  return list(ls_set.astype(int))


def write_prid2011(
  root: str,
  people: Sequence[int],
  frames: FrameFn,
  lengths: Callable[[int, int], int],
  splits: list[dict] | None = None,
) -> None:
  """Writes `<root>/prid_2011/multi_shot/cam_a|cam_b/person_NNNN/NNNN.png` (+ splits json)."""
  base = os.path.join(root, "prid_2011")
  for person in people:
    for cam, cam_name in ((1, "cam_a"), (2, "cam_b")):
      for i in range(lengths(person, cam)):
        _save(
          os.path.join(base, "multi_shot", cam_name, f"person_{person:04d}", f"{i + 1:04d}.png"),
          frames(person, cam, i),
        )
  if splits is not None:
    with open(os.path.join(base, "splits_prid2011.json"), "w") as f:
      json.dump(splits, f)


def write_duke(
  root: str,
  tracklets: Sequence[tuple[str, int, int, int, int]],
  frames: FrameFn,
  frame_number: Callable[[int], int] = lambda i: i + 1,
) -> None:
  """Writes `<root>/DukeMTMC-VideoReID/<split>/<pid>/<tracklet>/<pid>_C<cam>_F<n>_X<..>.jpg`.

  Args:
      tracklets: `(split, pid, tracklet id, camid, length)` per tracklet.
      frame_number: frame number written in the name of the i-th frame.
  """
  base = os.path.join(root, "DukeMTMC-VideoReID")
  for split in ("train", "query", "gallery"):
    os.makedirs(os.path.join(base, split), exist_ok=True)
  for split, pid, tracklet, camid, length in tracklets:
    folder = os.path.join(base, split, f"{pid:04d}", f"{tracklet:04d}")
    for i in range(length):
      name = f"{pid:04d}_C{camid}_F{frame_number(i):04d}_X{30000 + i}.jpg"
      _save(os.path.join(folder, name), frames(pid, camid, i))
