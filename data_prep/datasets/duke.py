"""DukeMTMC-VideoReID (Wu et al., CVPR 2018): 1,812 people, 8 cameras, 4,832 tracklets.

Layout: `DukeMTMC-VideoReID/{train,query,gallery}/<pid4>/<tracklet4>/` with frames named
`<pid4>_C<cam>_F<frame>_X<n>.jpg`; each folder is written as its own split.
"""

from __future__ import annotations

import os
import re

from data_prep import layout
from data_prep.dataset import Dataset, LayoutError, Protocol, Tracklet

_SPLITS = ("train", "query", "gallery")
_ID = re.compile(r"(\d{4})")
_FRAME = re.compile(r"(\d{4})_C(\d+)_F(\d+)_X(\d+)\.jpg")


def read(manual_dir: str) -> list[Tracklet]:
  root = layout.find_root(manual_dir, "gallery", ("DukeMTMC-VideoReID",))
  listing = layout.Listing()
  tracklets = []
  for split in _SPLITS:
    split_dir = os.path.join(root, split)
    pid_names = sorted(listing(split_dir))
    for pid_name in pid_names:
      pid = int(layout.match(_ID, pid_name, split_dir, "0001")[1])
      pid_dir = os.path.join(split_dir, pid_name)
      for tracklet_name in sorted(listing(pid_dir)):
        tracklet_id = int(layout.match(_ID, tracklet_name, pid_dir, "0001")[1])
        folder = os.path.join(pid_dir, tracklet_name)
        frames, cams = [], set()
        for name in listing(folder):
          path = os.path.join(folder, name)
          m = layout.match(_FRAME, name, folder, "0001_C6_F0099_X30823.jpg")
          if int(m[1]) != pid:
            raise LayoutError(
              f"{path}: tracklet {folder} has frames from two pids ({pid} and {m[1]})"
            )
          cams.add(int(m[2]))
          frames.append((int(m[3]), path))
        if len(cams) > 1:
          raise LayoutError(f"{folder}: frames from cameras {sorted(cams)}")
        numbers, paths = layout.sorted_frames(frames, folder)
        tracklets.append(
          Tracklet(
            split=split,
            frames=paths,
            frame_numbers=numbers,
            pid=pid,
            camid=cams.pop(),
            tracklet_id=tracklet_id,
            role=split,
          )
        )
  return tracklets


DATASET = Dataset(
  name="duke",
  description=__doc__.split("\n")[0],
  instructions="Download and unpack DukeMTMC-VideoReID.zip; pass the folder holding train/, "
  "query/ and gallery/ (or its parent) as the manual directory.",
  read=read,
  splits=_SPLITS,
  views={"train": ("train",), "eval": ("query", "gallery")},
  protocols=(
    Protocol(
      "duke",
      queries_in_gallery=False,
      description="query tracklets against gallery tracklets",
    ),
  ),
)
