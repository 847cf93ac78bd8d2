"""Readers for the on-disk layouts of MARS, iLIDS-VID, PRID2011 and DukeMTMC-VideoReID.

Each reader turns a user's download into a list of `Tracklet`s: frame paths in frame-number order
plus pid, camera, tracklet id, role (train / query / gallery) and, for iLIDS-VID and PRID2011, the
10 person splits. The whole layout (name lists, .mat files, folder structure, name parsing, one pid
per tracklet) is checked up front, before anything is written, so a bad download fails in seconds
with the offending file named instead of hours into a build; images themselves are checked while
they are encoded (`encode_frame`).

Frames are ordered by the frame number parsed from their names, never by directory listing order,
which differs between file systems (several public codebases use unsorted `glob`, so their clips
and splits are not reproducible).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from collections.abc import Callable

import numpy as np
import scipy.io
from PIL import Image

ROLES = ("train", "query", "gallery")
NUM_PERSON_SPLITS = 10
# Seed of the 10 PRID2011 person splits when no `splits_prid2011.json` is given.
PRID_SPLIT_SEED = 2011
# PRID2011 protocol: of the 200 people seen by both cameras, keep those with more than 21 frames
# in each camera (178 people).
PRID_SHARED_PEOPLE = 200
PRID_MIN_FRAMES = 22
# PNG frames (iLIDS-VID, PRID2011) are stored as JPEG so every dataset decodes through one path.
JPEG_QUALITY = 95

# TFDS splits each dataset is written as.
SPLITS = {
  "mars": ("train", "test"),
  "ilidsvid": ("tracklets",),
  "prid2011": ("tracklets",),
  "duke": ("train", "query", "gallery"),
}


class LayoutError(ValueError):
  """The download does not have the expected layout; the message names the offending file."""


@dataclasses.dataclass(frozen=True)
class Tracklet:
  """One tracklet of a download: what becomes one TFDS example."""

  split: str  # TFDS split it is written to
  frames: tuple[str, ...]  # image paths, in frame-number order
  frame_numbers: tuple[int, ...]
  pid: int  # MARS: -1 junk, 0 distractor
  camid: int  # 1-based
  tracklet_id: int
  role: str  # one of ROLES
  person_split_role: tuple[int, ...] | None = None  # per split: 0 train person, 1 test person


def read_layout(dataset: str, manual_dir: str) -> list[Tracklet]:
  """All tracklets of `dataset` found in `manual_dir`, in a canonical (sorted) order."""
  readers: dict[str, Callable[[str], list[Tracklet]]] = {
    "mars": _read_mars,
    "ilidsvid": _read_ilidsvid,
    "prid2011": _read_prid2011,
    "duke": _read_duke,
  }
  if dataset not in readers:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(readers)}")
  if not os.path.isdir(manual_dir):
    raise LayoutError(f"missing folder: {manual_dir} (the manual download directory)")
  return readers[dataset](manual_dir)


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


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _find_root(manual_dir: str, marker: str, subfolders: tuple[str, ...]) -> str:
  """`manual_dir` or its child named as in the download, whichever holds `marker`."""
  for root in (manual_dir, *(os.path.join(manual_dir, s) for s in subfolders)):
    if os.path.exists(os.path.join(root, marker)):
      return root
  raise LayoutError(
    f"missing file: {os.path.join(manual_dir, marker)} (also looked in "
    f"{', '.join(os.path.join(manual_dir, s) for s in subfolders)})"
  )


def _require(path: str) -> str:
  if not os.path.exists(path):
    raise LayoutError(f"missing file: {path}")
  return path


class _Listing:
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


def _load_mat(path: str, key: str) -> np.ndarray:
  try:
    mat = scipy.io.loadmat(_require(path))
  except LayoutError:
    raise
  except Exception as e:
    raise LayoutError(f"unreadable .mat file: {path} ({e})") from None
  if key not in mat:
    found = sorted(k for k in mat if not k.startswith("__"))
    raise LayoutError(f"{path}: no key {key!r} (found {found})")
  return np.asarray(mat[key])


def _integers(values: np.ndarray, path: str, what: str) -> np.ndarray:
  if not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values)):
    raise LayoutError(f"{path}: {what} must hold integers")
  return values.astype(np.int64)


def _match(pattern: re.Pattern, name: str, path: str, example: str) -> re.Match:
  m = pattern.fullmatch(name)
  if m is None:
    raise LayoutError(f"cannot parse name {name!r} in {path} (expected names like {example})")
  return m


def _sorted_frames(frames: list[tuple[int, str]], where: str) -> tuple[tuple[int, ...], tuple]:
  """(frame numbers, paths) sorted by frame number."""
  if not frames:
    raise LayoutError(f"no frames in {where}")
  frames.sort()
  numbers = [n for n, _ in frames]
  if len(set(numbers)) != len(numbers):
    raise LayoutError(f"{where}: two frames share a frame number")
  return tuple(numbers), tuple(p for _, p in frames)


def _person_split_roles(test_people: list[set[int]], people: list[int]) -> dict[int, tuple]:
  """Per person: for each split, 1 when a test person there, 0 when a train person."""
  return {p: tuple(int(p in test) for test in test_people) for p in people}


# ---------------------------------------------------------------------------------------------
# MARS

_MARS_NAME = re.compile(r"(\d{4}|00-1)C(\d)T(\d{4})F(\d{3,})\.jpg")


def _read_mars(manual_dir: str) -> list[Tracklet]:
  root = _find_root(manual_dir, os.path.join("info", "tracks_train_info.mat"), ("MARS", "mars"))
  info = os.path.join(root, "info")
  listing = _Listing()
  train_rows = _mars_rows(os.path.join(info, "tracks_train_info.mat"), "track_train_info")
  test_rows = _mars_rows(os.path.join(info, "tracks_test_info.mat"), "track_test_info")
  query_path = os.path.join(info, "query_IDX.mat")
  query = _load_mat(query_path, "query_IDX")
  if query.ndim > 2 or (query.ndim == 2 and min(query.shape) != 1) or query.size == 0:
    raise LayoutError(f"{query_path}: query_IDX has shape {query.shape}, expected (1, Q)")
  query = _integers(query.reshape(-1), query_path, "query_IDX")
  if query.min() < 1 or query.max() > len(test_rows):
    raise LayoutError(
      f"{query_path}: query indices must lie in 1..{len(test_rows)} (the test tracklets)"
    )
  query_rows = set((query - 1).tolist())
  tracklets = _mars_split(
    root,
    "train",
    train_rows,
    listing,
    lambda i: "train",
  )
  tracklets += _mars_split(
    root,
    "test",
    test_rows,
    listing,
    lambda i: "query" if i in query_rows else "gallery",
  )
  return tracklets


def _mars_rows(path: str, key: str) -> np.ndarray:
  rows = _load_mat(path, key)
  if rows.ndim != 2 or rows.shape[1] != 4 or rows.shape[0] == 0:
    raise LayoutError(f"{path}: {key} has shape {rows.shape}, expected (N, 4)")
  return _integers(rows, path, key)


def _mars_split(root, split, rows, listing, role_of) -> list[Tracklet]:
  folder = os.path.join(root, f"bbox_{split}")
  names_path = _require(os.path.join(root, "info", f"{split}_name.txt"))
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
      m = _match(_MARS_NAME, name, names_path, "0001C1T0001F001.jpg")
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
    numbers, paths = _sorted_frames(frames, f"tracklet {i + 1} of {mat_path}")
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


# ---------------------------------------------------------------------------------------------
# iLIDS-VID

_ILIDS_PERSON = re.compile(r"person(\d{3})")
_ILIDS_FRAME = re.compile(r"cam(\d)_person(\d{3})_(\d+)\.png")
_ILIDS_SPLITS = os.path.join("train-test people splits", "train_test_splits_ilidsvid.mat")


def _read_ilidsvid(manual_dir: str) -> list[Tracklet]:
  root = _find_root(manual_dir, os.path.join("sequences", "cam1"), ("i-LIDS-VID", "iLIDS-VID"))
  # The splits folder ships inside i-LIDS-VID/; some unpack it beside it.
  splits_path = os.path.join(root, _ILIDS_SPLITS)
  if not os.path.exists(splits_path) and os.path.exists(os.path.join(manual_dir, _ILIDS_SPLITS)):
    splits_path = os.path.join(manual_dir, _ILIDS_SPLITS)
  listing = _Listing()
  cam_dirs = [os.path.join(root, "sequences", f"cam{c}") for c in (1, 2)]
  people = []
  for cam_dir in cam_dirs:
    found = {}
    for name in listing(cam_dir):
      found[int(_match(_ILIDS_PERSON, name, cam_dir, "person001")[1])] = name
    people.append(found)
  if set(people[0]) != set(people[1]):
    only = sorted(set(people[0]) ^ set(people[1]))
    raise LayoutError(f"{cam_dirs[1]}: people differ from {cam_dirs[0]} (e.g. {only[:5]})")
  person_ids = sorted(people[0])
  ls_set = _load_mat(splits_path, "ls_set")
  if ls_set.shape != (NUM_PERSON_SPLITS, len(person_ids)):
    raise LayoutError(
      f"{splits_path}: ls_set has shape {ls_set.shape}, expected "
      f"({NUM_PERSON_SPLITS}, {len(person_ids)}) for the {len(person_ids)} people found"
    )
  ls_set = _integers(ls_set, splits_path, "ls_set")
  if ls_set.min() < 1 or ls_set.max() > len(person_ids):
    raise LayoutError(f"{splits_path}: ls_set indices must lie in 1..{len(person_ids)}")
  # Rows index the sorted person list (1-based); the first half of a row are test people.
  test_people = [{person_ids[i - 1] for i in row[: len(person_ids) // 2]} for row in ls_set]
  roles = _person_split_roles(test_people, person_ids)
  tracklets = []
  for person in person_ids:
    for camid, cam_dir in enumerate(cam_dirs, start=1):
      folder = os.path.join(cam_dir, people[camid - 1][person])
      frames = []
      for name in listing(folder):
        path = os.path.join(folder, name)
        m = _match(_ILIDS_FRAME, name, folder, f"cam{camid}_person001_00317.png")
        if int(m[2]) != person:
          raise LayoutError(
            f"{path}: tracklet {folder} has frames from two pids ({person} and {m[2]})"
          )
        if int(m[1]) != camid:
          raise LayoutError(f"{path}: frame of camera {m[1]} in {folder}")
        frames.append((int(m[3]), path))
      numbers, paths = _sorted_frames(frames, folder)
      tracklets.append(
        Tracklet(
          split="tracklets",
          frames=paths,
          frame_numbers=numbers,
          pid=person,
          camid=camid,
          tracklet_id=1,
          role="query" if camid == 1 else "gallery",
          person_split_role=roles[person],
        )
      )
  return tracklets


# ---------------------------------------------------------------------------------------------
# PRID2011

_PRID_PERSON = re.compile(r"person_(\d{4})")
_PRID_FRAME = re.compile(r"(\d+)\.png")


def _read_prid2011(manual_dir: str) -> list[Tracklet]:
  root = _find_root(
    manual_dir, os.path.join("multi_shot", "cam_a"), ("prid_2011", "prid2011", "PRID2011")
  )
  listing = _Listing()
  cam_dirs = [os.path.join(root, "multi_shot", c) for c in ("cam_a", "cam_b")]
  frames_of = [{}, {}]  # camera -> person -> [(frame number, path)]
  for cam, cam_dir in enumerate(cam_dirs):
    for name in listing(cam_dir):
      person = int(_match(_PRID_PERSON, name, cam_dir, "person_0001")[1])
      if person > PRID_SHARED_PEOPLE:
        continue
      folder = os.path.join(cam_dir, name)
      frames_of[cam][person] = [
        (int(_match(_PRID_FRAME, f, folder, "0001.png")[1]), os.path.join(folder, f))
        for f in listing(folder)
      ]
  people = sorted(
    p
    for p in set(frames_of[0]) & set(frames_of[1])
    if min(len(frames_of[0][p]), len(frames_of[1][p])) >= PRID_MIN_FRAMES
  )
  if len(people) < 2:
    raise LayoutError(
      f"{root}: found {len(people)} people with more than {PRID_MIN_FRAMES - 1} frames in "
      f"both cameras among person_0001..person_{PRID_SHARED_PEOPLE:04d}"
    )
  roles = _person_split_roles(_prid_test_people(root, manual_dir, people), people)
  tracklets = []
  for person in people:
    for cam, cam_dir in enumerate(cam_dirs):
      where = os.path.join(cam_dir, f"person_{person:04d}")
      numbers, paths = _sorted_frames(frames_of[cam][person], where)
      tracklets.append(
        Tracklet(
          split="tracklets",
          frames=paths,
          frame_numbers=numbers,
          pid=person,
          camid=cam + 1,
          tracklet_id=1,
          role="query" if cam == 0 else "gallery",
          person_split_role=roles[person],
        )
      )
  return tracklets


def _prid_test_people(root: str, manual_dir: str, people: list[int]) -> list[set[int]]:
  """Test people of the 10 splits: from `splits_prid2011.json` if present, else seeded."""
  for path in (
    os.path.join(root, "splits_prid2011.json"),
    os.path.join(manual_dir, "splits_prid2011.json"),
  ):
    if os.path.exists(path):
      return _prid_json_splits(path, people)
  rng = np.random.default_rng(PRID_SPLIT_SEED)
  order = [rng.permutation(len(people)) for _ in range(NUM_PERSON_SPLITS)]
  return [{people[i] for i in perm[: len(people) // 2]} for perm in order]


def _prid_json_splits(path: str, people: list[int]) -> list[set[int]]:
  """Reads the usual `[{"train": ["person_0001", ...], "test": [...]}, ...]` split file."""
  try:
    with open(path) as f:
      splits = json.load(f)
    tests = [{int(_PRID_PERSON.fullmatch(n)[1]) for n in s["test"]} for s in splits]
    trains = [{int(_PRID_PERSON.fullmatch(n)[1]) for n in s["train"]} for s in splits]
  except Exception as e:
    raise LayoutError(
      f'{path}: expected a list of {{"train": [...], "test": [...]}} with names like '
      f"person_0001 ({type(e).__name__}: {e})"
    ) from None
  if len(tests) < NUM_PERSON_SPLITS:
    raise LayoutError(f"{path}: holds {len(tests)} splits, expected {NUM_PERSON_SPLITS}")
  for k, (test, train) in enumerate(zip(tests, trains)):
    if test | train != set(people) or test & train:
      raise LayoutError(
        f"{path}: split {k} does not divide the {len(people)} kept people into disjoint "
        "train and test sets"
      )
  return tests[:NUM_PERSON_SPLITS]


# ---------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID

_DUKE_ID = re.compile(r"(\d{4})")
_DUKE_FRAME = re.compile(r"(\d{4})_C(\d+)_F(\d+)_X(\d+)\.jpg")


def _read_duke(manual_dir: str) -> list[Tracklet]:
  root = _find_root(manual_dir, "gallery", ("DukeMTMC-VideoReID",))
  listing = _Listing()
  tracklets = []
  for split in SPLITS["duke"]:
    split_dir = os.path.join(root, split)
    pid_names = sorted(listing(split_dir))
    for pid_name in pid_names:
      pid = int(_match(_DUKE_ID, pid_name, split_dir, "0001")[1])
      pid_dir = os.path.join(split_dir, pid_name)
      for tracklet_name in sorted(listing(pid_dir)):
        tracklet_id = int(_match(_DUKE_ID, tracklet_name, pid_dir, "0001")[1])
        folder = os.path.join(pid_dir, tracklet_name)
        frames, cams = [], set()
        for name in listing(folder):
          path = os.path.join(folder, name)
          m = _match(_DUKE_FRAME, name, folder, "0001_C6_F0099_X30823.jpg")
          if int(m[1]) != pid:
            raise LayoutError(
              f"{path}: tracklet {folder} has frames from two pids ({pid} and {m[1]})"
            )
          cams.add(int(m[2]))
          frames.append((int(m[3]), path))
        if len(cams) > 1:
          raise LayoutError(f"{folder}: frames from cameras {sorted(cams)}")
        numbers, paths = _sorted_frames(frames, folder)
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
