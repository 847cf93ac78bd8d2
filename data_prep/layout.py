"""Helpers for the layout readers of `data_prep.datasets`: finding the download's root, cached
listings, .mat files, name parsing, frame ordering, and frame encoding.

Frames are ordered by the frame number parsed from their names, never by directory listing order,
which differs between file systems (several public codebases use unsorted `glob`, so their clips
and splits are not reproducible).
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import scipy.io
from PIL import Image

from data_prep.dataset import LayoutError, Tracklet

# The one TFDS split of two-camera, person-split datasets (iLIDS-VID, PRID2011).
PERSON_SPLIT_TFDS_SPLIT = "tracklets"
# PNG frames (iLIDS-VID, PRID2011) are stored as JPEG so every dataset decodes through one path.
JPEG_QUALITY = 95


def encode_frame(path: str) -> bytes:
  """The frame at `path` as JPEG bytes: JPEGs are kept as they are, other formats re-encoded.

  Raises LayoutError naming `path` when the file is missing, unreadable or corrupt (decoding
  the whole image catches truncated files, which a header check alone would not).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
    image = Image.open(io.BytesIO(data))
    image.load()
  except FileNotFoundError:
    raise LayoutError(f"missing file: {path}") from None
  except Exception as e:  # PIL raises many types for bad data; all mean the same to a user.
    raise LayoutError(f"unreadable or corrupt image: {path} ({e})") from None
  if image.format == "JPEG" and image.mode in ("RGB", "L"):
    return data
  buffer = io.BytesIO()
  image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
  return buffer.getvalue()


def find_root(manual_dir: str, marker: str, subfolders: tuple[str, ...]) -> str:
  """`manual_dir` or its child named as in the download, whichever holds `marker`."""
  for root in (manual_dir, *(os.path.join(manual_dir, s) for s in subfolders)):
    if os.path.exists(os.path.join(root, marker)):
      return root
  raise LayoutError(
    f"missing file: {os.path.join(manual_dir, marker)} (also looked in "
    f"{', '.join(os.path.join(manual_dir, s) for s in subfolders)})"
  )


def require(path: str) -> str:
  if not os.path.exists(path):
    raise LayoutError(f"missing file: {path}")
  return path


class Listing:
  """Cached directory listings: one `listdir` per folder instead of one `stat` per frame."""

  def __init__(self):
    self._cache: dict[str, frozenset[str]] = {}

  def __call__(self, folder: str) -> frozenset[str]:
    if folder not in self._cache:
      try:
        self._cache[folder] = frozenset(os.listdir(folder))
      except FileNotFoundError:
        raise LayoutError(f"missing folder: {folder}") from None
    return self._cache[folder]

  def require(self, path: str) -> str:
    if os.path.basename(path) not in self(os.path.dirname(path)):
      raise LayoutError(f"missing file: {path}")
    return path


def load_mat(path: str, key: str) -> np.ndarray:
  try:
    mat = scipy.io.loadmat(require(path))
  except LayoutError:
    raise
  except Exception as e:
    raise LayoutError(f"unreadable .mat file: {path} ({e})") from None
  if key not in mat:
    found = sorted(k for k in mat if not k.startswith("__"))
    raise LayoutError(f"{path}: no key {key!r} (found {found})")
  return np.asarray(mat[key])


def integers(values: np.ndarray, path: str, what: str) -> np.ndarray:
  if not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values)):
    raise LayoutError(f"{path}: {what} must hold integers")
  return values.astype(np.int64)


def match(pattern: re.Pattern, name: str, path: str, example: str) -> re.Match:
  m = pattern.fullmatch(name)
  if m is None:
    raise LayoutError(f"cannot parse name {name!r} in {path} (expected names like {example})")
  return m


def sorted_frames(frames: list[tuple[int, str]], where: str) -> tuple[tuple[int, ...], tuple]:
  """(frame numbers, paths) sorted by frame number."""
  if not frames:
    raise LayoutError(f"no frames in {where}")
  frames.sort()
  numbers = [n for n, _ in frames]
  if len(set(numbers)) != len(numbers):
    raise LayoutError(f"{where}: two frames share a frame number")
  return tuple(numbers), tuple(p for _, p in frames)


def person_split_roles(test_people: list[set[int]], people: list[int]) -> dict[int, tuple]:
  """Per person: for each split, 1 when a test person there, 0 when a train person."""
  return {p: tuple(int(p in test) for test in test_people) for p in people}


def camera_pair_tracklet(
  person: int, camid: int, frames: list, where: str, roles: dict
) -> Tracklet:
  """The tracklet of `person` in camera `camid` of a two-camera, person-split dataset (one
  tracklet per person and camera, all in one TFDS split): camera 1 is the query side."""
  numbers, paths = sorted_frames(frames, where)
  return Tracklet(
    split=PERSON_SPLIT_TFDS_SPLIT,
    frames=paths,
    frame_numbers=numbers,
    pid=person,
    camid=camid,
    tracklet_id=1,
    role="query" if camid == 1 else "gallery",
    person_split_role=roles[person],
  )
