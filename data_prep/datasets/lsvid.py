"""LS-VID (Li et al., ICCV 2019): 3,772 people, 15 cameras, 14,943 tracklets, about 3M frames.

Layout: `LS-VID/list_sequence/list_seq_{train,val,test}.txt`, one tracklet per line as
`<path prefix> <pid>` (pids numbered from 0 in each split), the prefix naming the tracklet's frames
`tracklet_<split>/<pid4>/<f0>_<tracklet>_<cam>_<frame>.jpg` by their first three fields (with or
without the trailing `_`); `LS-VID/test/data/info_test.mat` (MATLAB 7.3, i.e. HDF5) holds per test
line a row `[start, end, pid, cam]` (`info_test`) and the 1-based rows of the queries (`query`).
The 11,333 test tracklets are written as one split, queries flagged. The val list is not
converted: it is the dataset authors' model-selection split, and the published protocol trains on
the train list and tests on the test list.

The reader streams: it keeps per tracklet only its line (prefix, pid) and the query rows, lists
one folder at a time and yields each tracklet as it is read, so its memory does not grow with the
frames.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import numpy as np

from data_prep import layout
from data_prep.dataset import Dataset, LayoutError, Protocol, Tracklet

_SPLITS = ("train", "test")
_CAMERAS = range(1, 16)
_LINE = re.compile(r"(\S+) (\d+)")
_FRAME = re.compile(r"(\d+)_(\d+)_(\d+)_(\d+)\.jpg")
_FRAME_EXAMPLE = "0015_0003_07_00000123.jpg"


def read(manual_dir: str) -> Iterator[Tracklet]:
  root = layout.find_root(
    manual_dir, os.path.join("list_sequence", "list_seq_train.txt"), ("LS-VID",)
  )
  # Everything but the frame folders is read and checked before the first tracklet is yielded.
  lines = {split: _lines(root, split) for split in _SPLITS}
  info_path = os.path.join(root, "test", "data", "info_test.mat")
  cameras, query_rows = _info(info_path, lines["test"], _list_path(root, "test"))
  folder, groups = None, {}  # the most recently listed folder, its names by tracklet prefix
  for split in _SPLITS:
    list_path = _list_path(root, split)
    for i, (line_number, prefix, pid) in enumerate(lines[split]):
      where = f"{list_path}:{line_number}"
      prefix_path = os.path.join(root, *prefix.split("/"))
      if os.path.dirname(prefix_path) != folder:
        folder, groups = os.path.dirname(prefix_path), None  # drops the previous listing first
        groups = _group(folder, where)
      key = os.path.basename(prefix_path).rstrip("_")
      names = groups.get(key)
      if not names:
        raise LayoutError(f"{where}: no frames {os.path.join(folder, key)}_* for {prefix!r}")
      frames = []
      for name in sorted(names):  # sorted only so that errors name the same file on any system
        m = layout.match(_FRAME, name, folder, _FRAME_EXAMPLE)
        frames.append((int(m[4]), os.path.join(folder, name)))
      pattern = f"{os.path.join(folder, key)}_*"
      camid = int(m[3])  # the frames share their prefix, so their camera and tracklet
      if camid not in _CAMERAS:
        raise LayoutError(f"{pattern}: camera {camid} of {where} is not one of 1..15")
      if split == "test" and cameras[i] != camid:
        raise LayoutError(
          f"{info_path}: row {i + 1} of info_test has camera {cameras[i]}, but the frames of "
          f"{where} ({pattern}) are from camera {camid}"
        )
      numbers, paths = layout.sorted_frames(frames, f"{where} ({pattern})")
      yield Tracklet(
        split=split,
        frames=paths,
        frame_numbers=numbers,
        pid=pid,
        camid=camid,
        tracklet_id=int(m[2]),
        role="train" if split == "train" else ("query" if i in query_rows else "gallery"),
      )


def _list_path(root: str, split: str) -> str:
  return os.path.join(root, "list_sequence", f"list_seq_{split}.txt")


def _lines(root: str, split: str) -> list[tuple[int, str, int]]:
  """(line number, path prefix, pid) per tracklet of a list file, checked."""
  path = layout.require(_list_path(root, split))
  lines, seen = [], {}
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      text = line.rstrip()
      if not text:
        continue
      m = _LINE.fullmatch(text)
      if m is None:
        raise LayoutError(
          f"{path}:{line_number}: expected '<path prefix> <pid>' separated by one space, "
          f"got {text!r}"
        )
      prefix, pid = m[1], int(m[2])
      parts = prefix.split("/")
      if (
        len(parts) < 2
        or parts[0] != f"tracklet_{split}"
        or any(p in ("", ".", "..") for p in parts[:-1])
        or not parts[-1].rstrip("_")
      ):
        raise LayoutError(
          f"{path}:{line_number}: the prefix {prefix!r} does not name frames under "
          f"tracklet_{split}/"
        )
      key = prefix.rstrip("_")
      if key in seen:
        raise LayoutError(
          f"{path}:{line_number}: tracklet {prefix!r} is listed again (first on line {seen[key]})"
        )
      seen[key] = line_number
      lines.append((line_number, prefix, pid))
  if not lines:
    raise LayoutError(f"{path}: lists no tracklets")
  return lines


def _group(folder: str, where: str) -> dict[str, list[str]]:
  """The names of `folder` by tracklet prefix: all but their last `_`-separated field."""
  try:
    names = os.listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    raise LayoutError(f"missing folder: {folder} (named on {where})") from None
  groups = {}
  for name in names:
    if "_" in name:
      groups.setdefault(name.rsplit("_", 1)[0], []).append(name)
  return groups


def _info(path: str, test_lines: list, test_list: str) -> tuple[np.ndarray, frozenset[int]]:
  """The camera of each test line and the 0-based query rows, from info_test.mat.

  The rows are checked against the test list (count and pids); their cameras are returned to be
  checked against the frame names.
  """
  layout.require(path)
  import h5py

  if h5py.is_hdf5(path):  # MATLAB 7.3: arrays are stored transposed
    rows = _hdf5(path, "info_test").T
    query = _hdf5(path, "query").T
  else:
    rows = layout.load_mat(path, "info_test")
    query = layout.load_mat(path, "query")
  if rows.ndim != 2 or rows.shape[1] != 4 or rows.shape[0] == 0:
    raise LayoutError(f"{path}: info_test has shape {rows.shape} (as MATLAB's), expected (N, 4)")
  rows = layout.integers(rows, path, "info_test")
  if len(rows) != len(test_lines):
    raise LayoutError(
      f"{path}: info_test has {len(rows)} rows, but {test_list} lists {len(test_lines)} tracklets"
    )
  for i, ((line_number, _, pid), row) in enumerate(zip(test_lines, rows)):
    if row[2] != pid:
      raise LayoutError(
        f"{path}: row {i + 1} of info_test has pid {row[2]}, but {test_list}:{line_number} has "
        f"pid {pid}"
      )
  if query.ndim > 2 or (query.ndim == 2 and min(query.shape) != 1) or query.size == 0:
    raise LayoutError(f"{path}: query has shape {query.shape} (as MATLAB's), expected (1, Q)")
  query = layout.integers(query.reshape(-1), path, "query")
  if query.min() < 1 or query.max() > len(rows):
    raise LayoutError(f"{path}: query rows must lie in 1..{len(rows)} (the test tracklets)")
  if len(np.unique(query)) != len(query):
    raise LayoutError(f"{path}: query lists a row twice")
  return rows[:, 3], frozenset((query - 1).tolist())


def _hdf5(path: str, key: str) -> np.ndarray:
  import h5py

  try:
    with h5py.File(path, "r") as f:
      if key not in f:
        raise LayoutError(f"{path}: no key {key!r} (found {sorted(f)})")
      if not isinstance(f[key], h5py.Dataset):
        raise LayoutError(f"{path}: {key} is not an array")
      return np.asarray(f[key][()])
  except LayoutError:
    raise
  except Exception as e:
    raise LayoutError(f"unreadable .mat file: {path} ({e})") from None


DATASET = Dataset(
  name="lsvid",
  description=__doc__.split("\n")[0],
  instructions="Download LS-VID (request it from the dataset authors) and unpack it so that one "
  "folder LS-VID/ holds list_sequence/, tracklet_train/, tracklet_test/ and test/data/"
  "info_test.mat; pass LS-VID/ (or its parent) as the manual directory.",
  read=read,
  splits=_SPLITS,
  views={"train": ("train",), "eval": ("test",)},
  protocols=(
    Protocol(
      "lsvid",
      queries_in_gallery=True,
      description="the official protocol (the dataset authors' code): the gallery is every test "
      "tracklet, queries included; the query itself is junk (same pid and camera); 4 queries "
      "have no valid match and are skipped",
    ),
    Protocol(
      "lsvid_no_query_in_gallery",
      queries_in_gallery=False,
      description="what several public loaders do: queries removed from the gallery; not "
      "comparable with `lsvid`",
    ),
  ),
)
