"""iLIDS-VID (Wang et al., ECCV 2014): 300 people, 2 cameras, one tracklet per person and camera.

Layout: `i-LIDS-VID/sequences/cam{1,2}/person<NNN>/cam<c>_person<NNN>_<frame>.png` and
`i-LIDS-VID/train-test people splits/train_test_splits_ilidsvid.mat`, whose `ls_set` holds 10
rows of 1-based indices into the sorted people, the first half of each row the test people.
Camera 1 is the query side of the protocol, camera 2 the gallery.
"""

from __future__ import annotations

import os
import re

from data_prep import layout
from data_prep.dataset import Dataset, LayoutError, Tracklet, camera_pair_protocol

PERSON_SPLITS = 10
_PERSON = re.compile(r"person(\d{3})")
_FRAME = re.compile(r"cam(\d)_person(\d{3})_(\d+)\.png")
_SPLITS = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")


def read(manual_dir: str) -> list[Tracklet]:
  root = layout.find_root(
    manual_dir, os.path.join("sequences", "cam1"), ("i-LIDS-VID", "iLIDS-VID")
  )
  # The splits folder ships inside i-LIDS-VID/; some unpack it beside it.
  splits_path = os.path.join(root, _SPLITS)
  if not os.path.exists(splits_path) and os.path.exists(os.path.join(manual_dir, _SPLITS)):
    splits_path = os.path.join(manual_dir, _SPLITS)
  listing = layout.Listing()
  cam_dirs = [os.path.join(root, "sequences", f"cam{c}") for c in (1, 2)]
  people = []
  for cam_dir in cam_dirs:
    found = {}
    for name in listing(cam_dir):
      found[int(layout.match(_PERSON, name, cam_dir, "person001")[1])] = name
    people.append(found)
  if set(people[0]) != set(people[1]):
    only = sorted(set(people[0]) ^ set(people[1]))
    raise LayoutError(f"{cam_dirs[1]}: people differ from {cam_dirs[0]} (e.g. {only[:5]})")
  person_ids = sorted(people[0])
  ls_set = layout.load_mat(splits_path, "ls_set")
  if ls_set.shape != (PERSON_SPLITS, len(person_ids)):
    raise LayoutError(
      f"{splits_path}: ls_set has shape {ls_set.shape}, expected "
      f"({PERSON_SPLITS}, {len(person_ids)}) for the {len(person_ids)} people found"
    )
  ls_set = layout.integers(ls_set, splits_path, "ls_set")
  if ls_set.min() < 1 or ls_set.max() > len(person_ids):
    raise LayoutError(f"{splits_path}: ls_set indices must lie in 1..{len(person_ids)}")
  # Rows index the sorted person list (1-based); the first half of a row are test people.
  test_people = [{person_ids[i - 1] for i in row[: len(person_ids) // 2]} for row in ls_set]
  roles = layout.person_split_roles(test_people, person_ids)
  tracklets = []
  for person in person_ids:
    for camid, cam_dir in enumerate(cam_dirs, start=1):
      folder = os.path.join(cam_dir, people[camid - 1][person])
      frames = []
      for name in listing(folder):
        path = os.path.join(folder, name)
        m = layout.match(_FRAME, name, folder, f"cam{camid}_person001_00317.png")
        if int(m[2]) != person:
          raise LayoutError(
            f"{path}: tracklet {folder} has frames from two pids ({person} and {m[2]})"
          )
        if int(m[1]) != camid:
          raise LayoutError(f"{path}: frame of camera {m[1]} in {folder}")
        frames.append((int(m[3]), path))
      tracklets.append(layout.camera_pair_tracklet(person, camid, frames, folder, roles))
  return tracklets


DATASET = Dataset(
  name="ilidsvid",
  description=__doc__.split("\n")[0],
  instructions="Download and unpack iLIDS-VID.tar; pass the folder holding i-LIDS-VID/ (or "
  'i-LIDS-VID/ itself, with sequences/ and "train-test people splits/") as the manual directory.',
  read=read,
  splits=(layout.PERSON_SPLIT_TFDS_SPLIT,),
  views={"train": (layout.PERSON_SPLIT_TFDS_SPLIT,), "eval": (layout.PERSON_SPLIT_TFDS_SPLIT,)},
  protocols=(camera_pair_protocol("ilidsvid", "cam1", "cam2"),),
  person_splits=PERSON_SPLITS,
)
