"""MARS (Zheng et al., ECCV 2016): 1,261 people, 6 cameras, 20,478 tracklets, 1.19M frames.

Layout: `bbox_train/<pid4>/`, `bbox_test/<pid4>/` (junk pid `00-1`, distractors `0000`) with frames
named `<pid4>C<cam>T<tracklet4>F<frame3>.jpg`; `info/train_name.txt`, `info/test_name.txt` (the
frame names, tracklet by tracklet); `info/tracks_{train,test}_info.mat` (rows `[start, end, pid,
camid]`, 1-based inclusive ranges into the name lists) and `info/query_IDX.mat` (1-based rows of
the test info). The 12,180 test tracklets are written as one split, queries flagged.
"""

from __future__ import annotations

import os
import re

import numpy as np

from data_prep import layout
from data_prep.dataset import Dataset, LayoutError, Protocol, Tracklet

_NAME = re.compile(r"(\d{4}|00-1)C(\d)T(\d{4})F(\d{3,})\.jpg")


def read(manual_dir: str) -> list[Tracklet]:
  root = layout.find_root(
    manual_dir, os.path.join("info", "tracks_train_info.mat"), ("MARS", "mars")
  )
  info = os.path.join(root, "info")
  listing = layout.Listing()
  train_rows = _rows(os.path.join(info, "tracks_train_info.mat"), "track_train_info")
  test_rows = _rows(os.path.join(info, "tracks_test_info.mat"), "track_test_info")
  query_path = os.path.join(info, "query_IDX.mat")
  query = layout.load_mat(query_path, "query_IDX")
  if query.ndim > 2 or (query.ndim == 2 and min(query.shape) != 1) or query.size == 0:
    raise LayoutError(f"{query_path}: query_IDX has shape {query.shape}, expected (1, Q)")
  query = layout.integers(query.reshape(-1), query_path, "query_IDX")
  if query.min() < 1 or query.max() > len(test_rows):
    raise LayoutError(
      f"{query_path}: query indices must lie in 1..{len(test_rows)} (the test tracklets)"
    )
  query_rows = set((query - 1).tolist())
  tracklets = _split(
    root,
    "train",
    train_rows,
    listing,
    lambda i: "train",
  )
  tracklets += _split(
    root,
    "test",
    test_rows,
    listing,
    lambda i: "query" if i in query_rows else "gallery",
  )
  return tracklets


def _rows(path: str, key: str) -> np.ndarray:
  rows = layout.load_mat(path, key)
  if rows.ndim != 2 or rows.shape[1] != 4 or rows.shape[0] == 0:
    raise LayoutError(f"{path}: {key} has shape {rows.shape}, expected (N, 4)")
  return layout.integers(rows, path, key)


def _split(root, split, rows, listing, role_of) -> list[Tracklet]:
  folder = os.path.join(root, f"bbox_{split}")
  names_path = layout.require(os.path.join(root, "info", f"{split}_name.txt"))
  with open(names_path) as f:
    names = [line.strip() for line in f if line.strip()]
  mat_path = os.path.join(root, "info", f"tracks_{split}_info.mat")
  tracklets = []
  for i, (start, end, pid, camid) in enumerate(rows):
    if not 1 <= start <= end <= len(names):
      raise LayoutError(
        f"{mat_path}: row {i + 1} [{start}, {end}] lies outside the {len(names)} names "
        f"of {names_path}"
      )
    frames, tracklet_ids = [], set()
    for name in names[start - 1 : end]:
      m = layout.match(_NAME, name, names_path, "0001C1T0001F001.jpg")
      path = listing.require(os.path.join(folder, m[1], name))
      name_pid = -1 if m[1] == "00-1" else int(m[1])
      if name_pid != pid:
        raise LayoutError(
          f"{path}: tracklet {i + 1} of {mat_path} has frames from two pids ({pid} and {name_pid})"
        )
      if int(m[2]) != camid:
        raise LayoutError(
          f"{path}: tracklet {i + 1} of {mat_path} has frames from two cameras ({camid} and {m[2]})"
        )
      tracklet_ids.add(int(m[3]))
      frames.append((int(m[4]), path))
    if len(tracklet_ids) != 1:
      raise LayoutError(
        f"{frames[0][1]}: tracklet {i + 1} of {mat_path} mixes tracklets {sorted(tracklet_ids)}"
      )
    numbers, paths = layout.sorted_frames(frames, f"tracklet {i + 1} of {mat_path}")
    tracklets.append(
      Tracklet(
        split=split,
        frames=paths,
        frame_numbers=numbers,
        pid=int(pid),
        camid=int(camid),
        tracklet_id=tracklet_ids.pop(),
        role=role_of(i),
      )
    )
  return tracklets


DATASET = Dataset(
  name="mars",
  description=__doc__.split("\n")[0],
  instructions="Download MARS (bbox_train.zip, bbox_test.zip and the info/ folder from "
  "https://github.com/liangzheng06/MARS-evaluation) and unzip them into one folder holding "
  "bbox_train/, bbox_test/ and info/; pass that folder as the manual directory.",
  read=read,
  splits=("train", "test"),
  views={"train": ("train",), "eval": ("test",)},
  protocols=(
    Protocol(
      "mars",
      queries_in_gallery=True,
      description="the official protocol (the dataset authors' MATLAB code): the gallery is every "
      "test tracklet, queries included; the query itself is junk (same pid and camera), as are "
      "pid -1 tracklets; pid 0 distractors are ordinary negatives",
    ),
    Protocol(
      "mars_no_query_in_gallery",
      queries_in_gallery=False,
      description="the common PyTorch practice: queries removed from the gallery, so about 140 "
      "queries lose their only true matches and are skipped; not comparable with `mars`",
    ),
  ),
  non_identity_pids=(-1, 0),
)
