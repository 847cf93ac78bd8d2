"""Synthetic MARS-layout generator: the layout MARS users have, and determinism by seed."""

import filecmp
import os
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_prep import synthetic

SMALL = dict(
  identities=4,
  test_identities=3,
  cameras=3,
  min_len=3,
  max_len=5,
  height=32,
  width=16,
  junk=2,
  distractors=2,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  counts = synthetic.generate(out, seed=7, **SMALL)
  return out, counts


def _mat(out, name, key):
  return scipy.io.loadmat(os.path.join(out, "info", name))[key]


def test_mars_layout(generated):
  out, counts = generated
  assert sorted(os.listdir(out)) == ["bbox_test", "bbox_train", "info"]
  assert sorted(os.listdir(os.path.join(out, "info"))) == [
    "query_IDX.mat",
    "test_name.txt",
    "tracks_test_info.mat",
    "tracks_train_info.mat",
    "train_name.txt",
  ]
  assert {"00-1", "0000"} <= set(os.listdir(os.path.join(out, "bbox_test")))
  for split in ("train", "test"):
    rows = _mat(out, f"tracks_{split}_info.mat", f"track_{split}_info")
    with open(os.path.join(out, "info", f"{split}_name.txt")) as f:
      names = f.read().split()
    assert rows.shape == (counts[f"{split}_tracklets"], 4)
    assert rows[0, 0] == 1 and rows[-1, 1] == len(names)
    np.testing.assert_array_equal(rows[1:, 0], rows[:-1, 1] + 1)  # contiguous name ranges
    for start, end, pid, camid in rows.astype(int):
      for name in names[start - 1 : end]:
        m = re.fullmatch(r"(\d{4}|00-1)C(\d)T\d{4}F\d{3}\.jpg", name)
        assert m and int(m[1].replace("00-1", "-1")) == pid and int(m[2]) == camid
        assert os.path.exists(os.path.join(out, f"bbox_{split}", m[1], name))
    image = Image.open(os.path.join(out, f"bbox_{split}", names[0][:4], names[0]))
    assert image.format == "JPEG" and image.size == (16, 32)


def _test_people(out) -> set[int]:
  rows = _mat(out, "tracks_test_info.mat", "track_test_info").astype(int)
  return {pid for pid in rows[:, 2] if pid > 0}


@pytest.mark.parametrize("test_identities, want", [(3, 3), (0, 4), (None, 4)])
def test_test_identities_default_to_the_training_ones(tmp_path, test_identities, want):
  """`test_identities` people in the test split; 0 (the config's default) or None: as many as
  `identities`."""
  settings = dict(SMALL, identities=4, test_identities=test_identities, junk=0, distractors=0)
  synthetic.generate(str(tmp_path), seed=3, **settings)
  assert len(_test_people(str(tmp_path))) == want


def test_queries_have_a_match_in_another_camera(generated):
  out, _ = generated
  rows = _mat(out, "tracks_test_info.mat", "track_test_info").astype(int)
  query = _mat(out, "query_IDX.mat", "query_IDX").astype(int)
  assert query.shape[0] == 1
  for q in query.ravel() - 1:
    pid, camid = rows[q, 2:]
    assert pid > 0
    assert ((rows[:, 2] == pid) & (rows[:, 3] != camid)).any()
  train_pids = set(_mat(out, "tracks_train_info.mat", "track_train_info")[:, 2])
  assert not train_pids & set(rows[:, 2])  # disjoint train and test people


def test_same_seed_same_images(generated, tmp_path):
  out, _ = generated
  again = str(tmp_path / "again")
  synthetic.generate(again, seed=7, **SMALL)
  for folder in ("bbox_train", "bbox_test"):
    cmp = filecmp.dircmp(os.path.join(out, folder), os.path.join(again, folder))
    assert not cmp.left_only and not cmp.right_only
    for sub in cmp.common_dirs:
      names = os.listdir(os.path.join(out, folder, sub))
      _, mismatch, errors = filecmp.cmpfiles(
        os.path.join(out, folder, sub), os.path.join(again, folder, sub), names, shallow=False
      )
      assert not mismatch and not errors
  other = str(tmp_path / "other")
  synthetic.generate(other, seed=8, **SMALL)
  with (
    open(os.path.join(out, "info", "train_name.txt")) as a,
    open(os.path.join(other, "info", "train_name.txt")) as b,
  ):
    assert a.read() != b.read()


def test_identities_differ_more_than_cameras_of_one_identity(generated):
  """Tracklet mean colours: the same person across cameras is closer than two people."""
  out, _ = generated
  rows = _mat(out, "tracks_train_info.mat", "track_train_info").astype(int)
  with open(os.path.join(out, "info", "train_name.txt")) as f:
    names = f.read().split()
  means = np.stack(
    [
      np.mean(
        [
          np.asarray(Image.open(os.path.join(out, "bbox_train", n[:4], n)), float)
          for n in names[start - 1 : end]
        ],
        axis=0,
      ).ravel()
      for start, end, _, _ in rows
    ]
  )
  distance = np.linalg.norm(means[:, None] - means[None], axis=-1)
  same = rows[:, 2][:, None] == rows[:, 2][None]
  off_diagonal = ~np.eye(len(rows), dtype=bool)
  assert distance[same & off_diagonal].mean() < distance[~same].mean()


def test_refuses_to_overwrite(generated):
  out, _ = generated
  with pytest.raises(FileExistsError):
    synthetic.generate(out, **SMALL)


def test_footage_videos_with_their_track_files_and_ground_truth(tmp_path):
  import json

  from reid_jax.footage.sources import discover
  from reid_jax.footage.videos import probe_video

  counts = synthetic.generate_footage(str(tmp_path), videos=2, people=3, frames=24, seed=1)
  assert counts == dict(videos=2, tracks=6, frames=48)
  tracks, skipped = discover(str(tmp_path))
  with open(tmp_path / "identities.json") as f:
    identities = json.load(f)
  assert sorted(t.name for t in tracks) == sorted(identities)
  assert sorted(identities.values()) == [0, 0, 1, 1, 2, 2]  # everyone in both cameras
  probe = probe_video(str(tmp_path / "camera1.mp4"))
  assert (probe.width, probe.height, probe.frames, probe.damaged_from) == (320, 180, 24, None)
  assert skipped.unused == [str(tmp_path / "identities.json")]  # named in the log
  for t in tracks:  # one walk across: boxes move monotonically, some over the edge
    lefts = t.boxes[:, 0]
    assert (np.diff(lefts) > 0).all() or (np.diff(lefts) < 0).all()
    assert np.diff(t.frame_numbers).max() == 1
  assert any((t.boxes[:, 0] < 0).any() or (t.boxes[:, 0] + 64 > 320).any() for t in tracks)
  with pytest.raises(FileExistsError):
    synthetic.generate_footage(str(tmp_path))
