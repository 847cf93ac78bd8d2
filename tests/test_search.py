"""`search`: which pairs it compares (within and across cameras, never a tracklet with itself),
what it refuses (another model's files or threshold, a non-finite feature), and every match."""

import csv
import os
import shutil

import numpy as np
import pytest

from reid_jax import config as config_lib
from reid_jax.evaluation.calibrate import ThresholdMismatch
from reid_jax.footage import embed as embed_lib
from reid_jax.footage import search as search_lib
from reid_jax.footage.tracks import Track

from tiny_training import tiny_config


def fake_embeddings(path, rows, *, fingerprint="f1", step=1):
  """An embed output of `rows`: (name, camera, source, first frame, last frame, timed, feature)."""
  tracks = []
  for name, camera, source, first, last, timed, _ in rows:
    frames = np.arange(first, last + 1)
    paths = None if timed else tuple(f"{source}/{f}.png" for f in frames)
    tracks.append(Track(name, camera, source, frames, paths=paths))
  features = np.array([row[-1] for row in rows], np.float32)
  meta = {"step": step, "fingerprint": fingerprint, "input": "/nowhere"}
  embed_lib.write_embeddings(str(path), features, tracks, meta)
  return str(path)


def search(tmp_path, query, **overrides):
  config = tiny_config(
    tmp_path / "data",
    mode="search",
    **{"search.query": query, "search.num_sheets": 0, **overrides},
  )
  config_lib.validate(config, num_devices=1)
  out = search_lib.run(config, str(tmp_path))
  read = lambda path: list(csv.DictReader(open(path)))
  return out, read(out["ranking"]), read(out["matches"])


# One camera filmed by one video: a (frames 1-10) and b (5-20) overlap, c (30-40) does not.
ONE_VIDEO = [
  ("cam:a", "cam", "/v/cam.mp4", 1, 10, True, [0.0]),
  ("cam:b", "cam", "/v/cam.mp4", 5, 20, True, [0.1]),
  ("cam:c", "cam", "/v/cam.mp4", 30, 40, True, [0.2]),
]


def test_one_camera_ranks_the_tracks_that_do_not_overlap_in_time(tmp_path):
  path = fake_embeddings(tmp_path / "e.npz", ONE_VIDEO)
  out, ranking, matches = search(tmp_path, path, **{"search.threshold": 1.0})
  by_query = {}
  for row in ranking:
    by_query.setdefault(row["query"], []).append((row["gallery"], row["same_camera"]))
  # a and b overlap: never compared; c is after both: compared with each, marked.
  assert by_query == {
    "cam:a": [("cam:c", "yes")],
    "cam:b": [("cam:c", "yes")],
    "cam:c": [("cam:b", "yes"), ("cam:a", "yes")],
  }
  assert sorted((m["query"], m["gallery"]) for m in matches) == [
    ("cam:a", "cam:c"),
    ("cam:b", "cam:c"),
  ]
  _, ranking, matches = search(
    tmp_path, path, **{"search.threshold": 1.0, "search.cross_camera_only": True}
  )
  assert ranking == [] and matches == []


def test_tracklet_folders_carry_no_time_and_are_ranked_within_a_camera(tmp_path):
  rows = [
    ("p1", "", "/f/p1", 1, 10, False, [0.0]),
    ("p2", "", "/f/p2", 1, 10, False, [0.3]),
  ]
  _, ranking, _ = search(tmp_path, fake_embeddings(tmp_path / "e.npz", rows))
  assert [(r["query"], r["gallery"], r["same_camera"]) for r in ranking] == [
    ("p1", "p2", "yes"),
    ("p2", "p1", "yes"),
  ]


def test_a_tracklet_is_never_its_own_match_whatever_file_it_comes_from(tmp_path):
  rows = [
    ("x:1", "x", "/v/x.mp4", 1, 5, True, [0.0]),
    ("y:1", "y", "/v/y.mp4", 1, 5, True, [0.5]),
  ]
  query = fake_embeddings(tmp_path / "e.npz", rows)
  gallery = str(tmp_path / "copy.npz")
  shutil.copy(query, gallery)
  _, ranking, matches = search(
    tmp_path, query, **{"search.gallery": gallery, "search.threshold": 10.0}
  )
  assert [(r["query"], r["gallery"]) for r in ranking] == [("x:1", "y:1"), ("y:1", "x:1")]
  assert [(m["query"], m["gallery"]) for m in matches] == [("x:1", "y:1")]  # each pair once


def test_matches_hold_every_pair_under_the_threshold_whatever_top_k(tmp_path):
  rows = [(f"c{i}:1", f"c{i}", f"/v/c{i}.mp4", 1, 5, True, [0.01 * i]) for i in range(6)]
  _, ranking, matches = search(
    tmp_path,
    fake_embeddings(tmp_path / "e.npz", rows),
    **{"search.top_k": 1, "search.threshold": 0.5},
  )
  assert len(ranking) == 6  # the top 1 of each
  assert len(matches) == 15  # every pair of the 6 cameras, once


def test_search_refuses_another_models_files_and_threshold(tmp_path):
  query = fake_embeddings(tmp_path / "q.npz", ONE_VIDEO, fingerprint="f1")
  other = fake_embeddings(tmp_path / "g.npz", ONE_VIDEO, fingerprint="f2", step=7)
  with pytest.raises(search_lib.EmbeddingsMismatch, match="embedded by different models"):
    search(tmp_path, query, **{"search.gallery": other})
  (tmp_path / "threshold.json").write_text(
    '{"metric": "euclidean", "threshold": 0.5, "fingerprint": "f2", "step": 7}'
  )
  with pytest.raises(ThresholdMismatch, match="measured with another model .*step 7"):
    search(tmp_path, query)
  (tmp_path / "threshold.json").write_text('{"metric": "cosine", "threshold": 0.5}')
  with pytest.raises(ThresholdMismatch, match="threshold on cosine distances"):
    search(tmp_path, query)
  os.remove(tmp_path / "threshold.json")
  rows = [*ONE_VIDEO[:2], (*ONE_VIDEO[2][:-1], [float("nan")])]
  with pytest.raises(search_lib.EmbeddingsMismatch, match="the feature of cam:c is not finite"):
    search(tmp_path, fake_embeddings(tmp_path / "nan.npz", rows))


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("search.top_k", 0, "must be >= 1, got 0"),
    ("search.top_k", -3, "must be >= 1, got -3"),
    ("search.num_sheets", -1, "must be >= 0"),
    ("embed.frame_stride", 0, "must be >= 1"),
    ("embed.min_visibility", 1.5, "must lie in"),
  ],
)
def test_search_and_embed_settings_are_validated(field, value, message):
  config = tiny_config("/nowhere", mode="search", **{field: value})
  with pytest.raises(config_lib.ConfigError, match=rf"config.{field}: {message}"):
    config_lib.validate(config, num_devices=1)
