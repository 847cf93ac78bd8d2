"""PRID2011 multi-shot (Hirzer et al., SCIA 2011): the 178 people usable for video re-id.

Layout: `prid_2011/multi_shot/cam_{a,b}/person_<NNNN>/<frame>.png`. Of the 200 people seen by
both cameras, those with more than 21 frames in each are kept (178). The 10 person splits come
from `splits_prid2011.json` (the usual `[{"train": [...], "test": [...]}, ...]` file) when it is
in the download, else are drawn with a fixed seed. cam_a is the query side, cam_b the gallery.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from data_prep import layout
from data_prep.dataset import Dataset, LayoutError, Tracklet, camera_pair_protocol

PERSON_SPLITS = 10
# Seed of the 10 person splits when no `splits_prid2011.json` is given.
SPLIT_SEED = 2011
SHARED_PEOPLE = 200
MIN_FRAMES = 22
_PERSON = re.compile(r"person_(\d{4})")
_FRAME = re.compile(r"(\d+)\.png")


def read(manual_dir: str) -> list[Tracklet]:
  root = layout.find_root(
    manual_dir, os.path.join("multi_shot", "cam_a"), ("prid_2011", "prid2011", "PRID2011")
  )
  listing = layout.Listing()
  cam_dirs = [os.path.join(root, "multi_shot", c) for c in ("cam_a", "cam_b")]
  frames_of = [{}, {}]  # camera -> person -> [(frame number, path)]
  for cam, cam_dir in enumerate(cam_dirs):
    for name in listing(cam_dir):
      person = int(layout.match(_PERSON, name, cam_dir, "person_0001")[1])
      if person > SHARED_PEOPLE:
        continue
      folder = os.path.join(cam_dir, name)
      frames_of[cam][person] = [
        (int(layout.match(_FRAME, f, folder, "0001.png")[1]), os.path.join(folder, f))
        for f in listing(folder)
      ]
  people = sorted(
    p
    for p in set(frames_of[0]) & set(frames_of[1])
    if min(len(frames_of[0][p]), len(frames_of[1][p])) >= MIN_FRAMES
  )
  if len(people) < 2:
    raise LayoutError(
      f"{root}: found {len(people)} people with more than {MIN_FRAMES - 1} frames in "
      f"both cameras among person_0001..person_{SHARED_PEOPLE:04d}"
    )
  roles = layout.person_split_roles(_test_people(root, manual_dir, people), people)
  tracklets = []
  for person in people:
    for cam, cam_dir in enumerate(cam_dirs):
      where = os.path.join(cam_dir, f"person_{person:04d}")
      tracklets.append(
        layout.camera_pair_tracklet(person, cam + 1, frames_of[cam][person], where, roles)
      )
  return tracklets


def _test_people(root: str, manual_dir: str, people: list[int]) -> list[set[int]]:
  """Test people of the 10 splits: from `splits_prid2011.json` if present, else seeded."""
  for path in (
    os.path.join(root, "splits_prid2011.json"),
    os.path.join(manual_dir, "splits_prid2011.json"),
  ):
    if os.path.exists(path):
      return _json_splits(path, people)
  rng = np.random.default_rng(SPLIT_SEED)
  order = [rng.permutation(len(people)) for _ in range(PERSON_SPLITS)]
  return [{people[i] for i in perm[: len(people) // 2]} for perm in order]


def _json_splits(path: str, people: list[int]) -> list[set[int]]:
  """Reads the usual `[{"train": ["person_0001", ...], "test": [...]}, ...]` split file."""
  try:
    with open(path) as f:
      splits = json.load(f)
    tests = [{int(_PERSON.fullmatch(n)[1]) for n in s["test"]} for s in splits]
    trains = [{int(_PERSON.fullmatch(n)[1]) for n in s["train"]} for s in splits]
  except Exception as e:
    raise LayoutError(
      f'{path}: expected a list of {{"train": [...], "test": [...]}} with names like '
      f"person_0001 ({type(e).__name__}: {e})"
    ) from None
  if len(tests) < PERSON_SPLITS:
    raise LayoutError(f"{path}: holds {len(tests)} splits, expected {PERSON_SPLITS}")
  for k, (test, train) in enumerate(zip(tests, trains)):
    if test | train != set(people) or test & train:
      raise LayoutError(
        f"{path}: split {k} does not divide the {len(people)} kept people into disjoint "
        "train and test sets"
      )
  return tests[:PERSON_SPLITS]


DATASET = Dataset(
  name="prid2011",
  description=__doc__.split("\n")[0],
  instructions="Download and unpack prid_2011.zip; pass the folder holding prid_2011/ (or "
  "prid_2011/ itself, with multi_shot/) as the manual directory. Put splits_prid2011.json there "
  f"to use the usual splits; without it 10 random splits with seed {SPLIT_SEED} are made.",
  read=read,
  splits=(layout.PERSON_SPLIT_TFDS_SPLIT,),
  views={"train": (layout.PERSON_SPLIT_TFDS_SPLIT,), "eval": (layout.PERSON_SPLIT_TFDS_SPLIT,)},
  protocols=(camera_pair_protocol("prid2011", "cam_a", "cam_b"),),
  person_splits=PERSON_SPLITS,
)
