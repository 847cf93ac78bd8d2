"""`embed` mode on a user's footage: tracklet folders, videos with MOT track files, bad input."""

import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_prep import built
from reid_jax import train
from reid_jax.evaluation import runner
from reid_jax.footage import embed as embed_lib
from reid_jax.footage.sources import FootageError, FootageTracklets, crop, discover, parse_mot
from reid_jax.inference import chunks

from footage_videos import save_frame, write_lines, write_video
from tiny_training import tiny_config

T, H, W = 4, 32, 16  # the tiny config's clips


def _write_mot(path, rows):
  return write_lines(path, [",".join(str(v) for v in row) for row in rows])


# ---------------------------------------------------------------------------------------------
# Track files


def test_mot_tracks_out_of_order_with_gaps(tmp_path):
  path = _write_mot(
    tmp_path / "cam.txt",
    [
      (3, 7, 1, 2, 10, 20, 0.9, -1, -1, -1),
      (1, 7, 0, 0, 10, 20, 0.8, -1, -1, -1),
      (2, 2, 5.5, 6.5, 8, 9, 1),
      (7, 7, 1, 1, 10, 20, 1),  # a gap: frames 4-6 without a box
      (1, 2, 5, 6, 8, 9),
    ],
  )
  tracks = parse_mot(path)
  assert list(tracks) == [2, 7]
  np.testing.assert_array_equal(tracks[7][0], [1, 3, 7])
  np.testing.assert_array_equal(tracks[7][1][1], [1, 2, 10, 20])
  np.testing.assert_array_equal(tracks[2][0], [1, 2])


@pytest.mark.parametrize(
  "line, message",
  [
    ("1,2,3,4,5", "5 fields"),
    ("one,2,3,4,5,6", "could not convert"),
    ("0,2,3,4,5,6", "1-based"),
    ("1,2,3,4,0,6", "no area"),
    ("1.5,2,3,4,5,6", "integers"),
    ("1,1,0,0,4,4", "second box"),
  ],
)
def test_malformed_track_line_is_named_or_skipped(tmp_path, line, message):
  path = tmp_path / "cam.txt"
  path.write_text("1,1,0,0,4,4\n\n" + line + "\n2,1,0,0,4,4\n")
  with pytest.raises(FootageError, match=rf"{path}:3: .*{message}"):
    parse_mot(str(path))
  from reid_jax.footage.sources import Skipped

  skipped = Skipped()
  tracks = parse_mot(str(path), skip_bad=True, skipped=skipped)
  assert skipped.lines == 1
  np.testing.assert_array_equal(tracks[1][0], [1, 2])


def test_crop_clips_boxes_over_the_edge():
  frame = np.arange(10 * 8 * 3, dtype=np.uint8).reshape(10, 8, 3)
  np.testing.assert_array_equal(crop(frame, np.array([-2.0, 7.5, 5, 10]), "x"), frame[7:10, 0:3])
  with pytest.raises(FootageError, match="x: the box .* outside the 8x10 frame"):
    crop(frame, np.array([8.0, 0, 3, 3]), "x")


# ---------------------------------------------------------------------------------------------
# Folders


def test_folder_layouts_and_frame_order(tmp_path):
  image = np.zeros((8, 4, 3), np.uint8)
  for name in ("f_2.jpg", "f_10.jpg", "f_9.png"):
    save_frame(str(tmp_path / "flat" / "walker" / name), image)
  (tmp_path / "flat" / "walker" / "notes.txt").write_text("not a frame")
  tracks, _ = discover(str(tmp_path / "flat"))
  assert [(t.name, t.camera) for t in tracks] == [("walker", "")]
  np.testing.assert_array_equal(tracks[0].frame_numbers, [2, 9, 10])  # by number, not name
  for cam in ("c1", "c2"):
    for tracklet in ("t1", "t2"):
      save_frame(str(tmp_path / "cams" / cam / tracklet / "0001.jpg"), image)
  tracks, _ = discover(str(tmp_path / "cams"))
  assert [(t.name, t.camera) for t in tracks] == [
    ("c1/t1", "c1"),
    ("c1/t2", "c1"),
    ("c2/t1", "c2"),
    ("c2/t2", "c2"),
  ]


def test_folder_errors_are_named(tmp_path):
  image = np.zeros((8, 4, 3), np.uint8)
  save_frame(str(tmp_path / "a" / "t" / "snapshot.jpg"), image)
  with pytest.raises(FootageError, match="snapshot.jpg: no frame number"):
    discover(str(tmp_path / "a"))
  (tmp_path / "b" / "cam" / "empty").mkdir(parents=True)
  with pytest.raises(FootageError, match="empty: an empty tracklet"):
    discover(str(tmp_path / "b"))
  save_frame(str(tmp_path / "c" / "t" / "1.jpg"), image)
  save_frame(str(tmp_path / "c" / "t" / "01.png"), image)
  with pytest.raises(FootageError, match="two frames share a frame number"):
    discover(str(tmp_path / "c"))
  with pytest.raises(FootageError, match="no such file or folder"):
    discover(str(tmp_path / "missing"))
  save_frame(str(tmp_path / "d" / "t" / "1.jpg"), image)
  with pytest.raises(FootageError, match="no tracklet of at least 5 frames"):
    discover(str(tmp_path / "d"), min_length=5)


# ---------------------------------------------------------------------------------------------
# One scene as a video and as crops


def _scene(tmp_path):
  """A 40 x 48 video of 9 frames with two tracks (one runs over the right edge), and the same
  crops as PNG tracklet folders."""
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(9)]
  write_video(tmp_path / "videos" / "gate.mkv", frames)
  rows = [(f, 1, 2, 3 + f, 12, 20) for f in range(1, 10)]  # 9 frames
  rows += [(f, 4, 40.5, 10, 16, 24) for f in (2, 3, 5)]  # over the edge, a gap
  _write_mot(tmp_path / "videos" / "gate.txt", rows)
  for frame, track, left, top, width, height in rows:
    box = np.array([left, top, width, height], float)
    save_frame(
      str(tmp_path / "crops" / "gate" / f"track{track}" / f"{frame:04d}.png"),
      crop(frames[frame - 1], box, "scene"),
    )
  return tmp_path / "videos", tmp_path / "crops"


def _clips(path, batch=4):
  tracks, _ = discover(str(path))
  source = FootageTracklets(tracks)
  batches = chunks.chunk_batches(source, num_frames=T, height=H, width=W, batch_size=batch)
  return tracks, list(batches)


def test_a_video_and_its_crops_give_the_same_clips(tmp_path):
  videos, crops = _scene(tmp_path)
  video_tracks, video_batches = _clips(videos)
  folder_tracks, folder_batches = _clips(crops)
  assert [t.name for t in video_tracks] == ["gate:1", "gate:4"]
  assert [t.camera for t in video_tracks] == ["gate", "gate"]
  assert [t.num_frames for t in video_tracks] == [t.num_frames for t in folder_tracks] == [9, 3]
  np.testing.assert_array_equal(video_tracks[1].frame_numbers, [2, 3, 5])
  # Chunks of one video come in decoding order, of folders tracklet by tracklet: compare per row.
  for rows in ((0,), (1,)):
    pick = lambda batches: np.concatenate(
      [b["clips"][np.isin(b["tracklet"], rows)] for b in batches]
    )
    np.testing.assert_array_equal(pick(video_batches), pick(folder_batches))
  # 9 frames: chunks of 4, 4 and 1 (repeated); 3 frames: one chunk.
  rows = np.concatenate([b["tracklet"] for b in video_batches])
  assert sorted(rows[rows >= 0].tolist()) == [0, 0, 0, 1]


def test_video_errors_are_named(tmp_path):
  videos, _ = _scene(tmp_path)
  track_file = videos / "gate.txt"
  original = track_file.read_text()
  track_file.write_text(original + "3,9,60,0,4,4\n")  # wholly outside 48 x 40
  with pytest.raises(FootageError, match=r"gate.txt: track 9's box in frame 3 .* outside"):
    discover(str(videos))
  tracks, skipped = discover(str(videos), skip_bad=True)
  assert skipped.boxes == 1 and [t.name for t in tracks] == ["gate:1", "gate:4"]
  track_file.write_text(original + "12,9,0,0,4,4\n")  # beyond the 9 frames
  with pytest.raises(
    FootageError, match="gate.mkv has 9 frames, but its track file has boxes up to frame 12"
  ):
    _clips(videos)
  (videos / "gate.mkv").write_bytes(b"not a video")
  with pytest.raises(FootageError, match="gate.mkv: unreadable video"):
    discover(str(videos))


# ---------------------------------------------------------------------------------------------
# The mode, on a trained model


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("embed_run")
  config = tiny_config(data_dir, **{"optim.total_epochs": 1, "optim.decay_start_epoch": 0})
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_embed_of_the_eval_tracklets_equals_extract(data_dir, trained, tmp_path):
  index = built.load_index(str(data_dir), "mars", "eval")
  root = str(built.finished_dir(str(data_dir), "mars"))
  for row in range(len(index["pids"])):
    for frame in range(index["frame_start"][row], index["frame_start"][row + 1]):
      shard = os.path.join(root, str(index["shards"][index["frame_shard"][frame]]))
      with open(shard, "rb") as f:
        f.seek(index["frame_offset"][frame])
        jpeg = f.read(index["frame_length"][frame])
      path = tmp_path / "footage" / f"cam{index['camids'][row]}" / f"t{row:04d}" / f"{frame}.jpg"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(jpeg)
  extracted = runner.run_extract(tiny_config(data_dir, mode="extract"), str(trained))
  output = embed_lib.run(
    tiny_config(
      data_dir, mode="embed", **{"embed.input": str(tmp_path / "footage"), "embed.output": ""}
    ),
    str(trained),
  )
  assert output == os.path.join(str(trained), "embeddings.npz")
  embedded = embed_lib.load_embeddings(output)
  order = np.argsort([int(n.split("/t")[1]) for n in embedded["names"]])
  with np.load(extracted) as saved:
    np.testing.assert_allclose(embedded["features"][order], saved["features"], atol=1e-5)
    np.testing.assert_array_equal(embedded["num_frames"][order], saved["num_frames"])
  assert embedded["cameras"][order][0] == f"cam{index['camids'][0]}"
  assert embedded["meta"]["model"] == "resnet3d50_nl" and embedded["meta"]["step"] == 2


def test_embed_of_a_video_equals_embed_of_its_crops(data_dir, trained, tmp_path):
  videos, crops = _scene(tmp_path)
  out = {}
  for name, path in (("video", videos), ("crops", crops)):
    config = tiny_config(
      data_dir,
      mode="embed",
      **{"embed.input": str(path), "embed.output": str(tmp_path / f"{name}.npz")},
    )
    out[name] = embed_lib.load_embeddings(embed_lib.run(config, str(trained)))
  np.testing.assert_allclose(out["video"]["features"], out["crops"]["features"], atol=1e-5)
  assert out["video"]["names"].tolist() == ["gate:1", "gate:4"]
  np.testing.assert_array_equal(out["video"]["first_frame"], [1, 2])
  np.testing.assert_array_equal(out["video"]["last_frame"], [9, 5])


def test_a_failed_embed_writes_nothing(data_dir, trained, tmp_path):
  image = np.zeros((8, 4, 3), np.uint8)
  save_frame(str(tmp_path / "in" / "t" / "1.jpg"), image)
  (tmp_path / "in" / "t" / "2.jpg").write_bytes(b"\xff\xd8 truncated")
  output = tmp_path / "out" / "embeddings.npz"
  config = tiny_config(
    data_dir, mode="embed", **{"embed.input": str(tmp_path / "in"), "embed.output": str(output)}
  )
  with pytest.raises(FootageError, match="2.jpg: unreadable frame"):
    embed_lib.run(config, str(trained))
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# Search and calibration


def test_calibration_on_a_known_distribution():
  from reid_jax.evaluation.calibrate import operating_points, pair_histograms

  rng = np.random.default_rng(1)
  # 60 people, 3 tracklets each over 2 cameras, on a line: same-person pairs are close.
  pids = np.repeat(np.arange(60), 3)
  cameras = np.tile([1, 2, 1], 60)
  features = (pids * 1.0 + rng.normal(scale=0.3, size=len(pids)))[:, None].astype(np.float32)
  edges, same, different = pair_histograms(features, pids, cameras, block_bytes=16 * 180 * 7)
  i, j = np.triu_indices(len(pids), 1)
  cross = cameras[i] != cameras[j]
  dist = ((features[i, 0] - features[j, 0]) ** 2)[cross]
  positive = (pids[i] == pids[j])[cross]
  assert same.sum() == positive.sum() and different.sum() == (~positive).sum()
  points = operating_points(edges, same, different, 0.01)
  exact_fmr = lambda t: np.mean(dist[~positive] <= t)
  exact_tmr = lambda t: np.mean(dist[positive] <= t)
  t, width = points["threshold"], points["resolution"]
  assert exact_fmr(t) <= 0.01 + 1e-9 < exact_fmr(t + width) + 1e-9
  assert points["true_match_rate"] == pytest.approx(exact_tmr(t), abs=1e-6)
  thresholds = np.sort(dist)
  eer = min(
    max(exact_fmr(x), 1 - exact_tmr(x)) for x in thresholds[:: max(1, len(thresholds) // 2000)]
  )
  assert points["eer"] == pytest.approx(eer, abs=0.02)


def test_calibrate_then_search_on_the_trained_model(data_dir, trained, tmp_path):
  import json

  from reid_jax.evaluation import calibrate as calibrate_lib
  from reid_jax.footage import search as search_lib

  workdir = tmp_path / "run"  # the trained run's checkpoints, without its other outputs
  workdir.mkdir()
  os.symlink(os.path.join(str(trained), "checkpoints"), workdir / "checkpoints")
  # A model of 2 steps barely tells people apart: at the default 1% of different-person pairs
  # the threshold may admit no same-person pair, so this run asks for 10%.
  config = tiny_config(data_dir, mode="calibrate", **{"calibrate.false_match_rate": 0.1})
  result = calibrate_lib.run(config, str(workdir))
  with open(workdir / "threshold.json") as f:
    saved = json.load(f)
  assert saved == result and saved["metric"] == "euclidean" and saved["step"] == 2
  assert 0 < saved["true_match_rate"] <= 1 and saved["false_match_rate"] <= 0.1
  assert (workdir / "pairs.png").stat().st_size and (workdir / "roc.png").stat().st_size
  videos, _ = _scene(tmp_path)
  embeddings = embed_lib.run(
    tiny_config(data_dir, mode="embed", **{"embed.input": str(videos)}), str(workdir)
  )
  out = search_lib.run(
    tiny_config(data_dir, mode="search", **{"search.query": embeddings}), str(workdir)
  )
  assert out["threshold"] == saved["threshold"]
  # Sheets of the 2 tracks (query and its one candidate of another camera: none, one camera).
  assert len(out["sheets"]) == 2 and all(os.path.getsize(p) for p in out["sheets"])


def test_search_draws_ranked_sheets_from_the_footage(data_dir, trained, tmp_path, monkeypatch):
  from reid_jax import ranked_sheets
  from reid_jax.footage import search as search_lib

  rng = np.random.default_rng(3)
  for cam in ("north", "south"):
    for tracklet in ("p1", "p2"):
      for frame in range(1, 6):
        image = rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)
        save_frame(str(tmp_path / "footage" / cam / tracklet / f"{frame}.png"), image)
  embeddings = embed_lib.run(
    tiny_config(
      data_dir,
      mode="embed",
      **{"embed.input": str(tmp_path / "footage"), "embed.output": str(tmp_path / "e.npz")},
    ),
    str(trained),
  )
  read, footage_of = [], search_lib.footage_of
  monkeypatch.setattr(search_lib, "footage_of", lambda meta: read.append(meta) or footage_of(meta))
  out = search_lib.run(
    tiny_config(
      data_dir,
      mode="search",
      **{"search.query": embeddings, "search.top_k": 2, "search.threshold": 1e9},
    ),
    str(tmp_path),
  )
  assert len(out["sheets"]) == 4
  assert len(read) == 1  # one file searched against itself: its footage is read once
  with Image.open(out["sheets"][0]) as sheet:
    pixels = np.asarray(sheet.convert("RGB"))
  # The query and its 2 candidates, one row each, of all 5 frames of north/p1 (the first query).
  row_height = ranked_sheets.TEXT + ranked_sheets.CELL[1] + 2 * ranked_sheets.BORDER
  assert pixels.shape[0] == 3 * (row_height + ranked_sheets.GAP) - ranked_sheets.GAP
  for column in range(5):
    with Image.open(tmp_path / "footage" / "north" / "p1" / f"{column + 1}.png") as frame:
      expected = ranked_sheets.cell(np.asarray(frame))
    x, y = ranked_sheets.frame_origin(0, column)
    cell = pixels[y : y + ranked_sheets.CELL[1], x : x + ranked_sheets.CELL[0]]
    np.testing.assert_array_equal(cell, expected)
  # Both candidates are matches under this threshold: their frames are green.
  x, y = ranked_sheets.frame_origin(1, 0)
  assert tuple(pixels[y - 2, x]) == ranked_sheets.COLOURS[True]
  assert tuple(pixels[2 + ranked_sheets.TEXT, 1]) == ranked_sheets.COLOURS[None]  # the query
  # Every pair of the 4 tracklets, once each: folders carry no time, so same-camera pairs too.
  assert out["num_matches"] == 6


def test_embed_needs_only_the_checkpoint(data_dir, trained, tmp_path):
  """The head's size comes from the checkpoint: no dataset is built, generated or read."""
  videos, _ = _scene(tmp_path)
  workdir = tmp_path / "copied_run"
  workdir.mkdir()
  os.symlink(os.path.join(str(trained), "checkpoints"), workdir / "checkpoints")
  config = tiny_config(
    tmp_path / "no_data",
    mode="embed",
    **{"embed.input": str(videos), "dataset.synthetic.identities": 0},
  )
  embedded = embed_lib.load_embeddings(embed_lib.run(config, str(workdir)))
  assert embedded["names"].tolist() == ["gate:1", "gate:4"]
  assert not (tmp_path / "no_data").exists() and sorted(os.listdir(workdir)) == [
    "checkpoints",
    "embeddings.npz",
  ]


_EMBED_AND_LIST_MODULES = """
import sys
sys.path.insert(0, sys.argv[1])
from tiny_training import tiny_config
from reid_jax import modes

config = tiny_config(sys.argv[2], mode="embed", **{"embed.input": sys.argv[3],
                     "embed.output": sys.argv[5], "dataset.synthetic.identities": 0})
modes.run_mode(config, sys.argv[4])
print(" ".join(sorted(m for m in sys.modules if m.startswith(("reid_jax", "data_prep")))))
"""
TRAINING_MODULES = (
  "reid_jax.train",
  "reid_jax.state",
  "reid_jax.optim",
  "reid_jax.losses",
  "reid_jax.metric_writer",
  "reid_jax.data.prepare",
  "reid_jax.data.pipeline",
  "reid_jax.data.sampling",
  "reid_jax.checkpoints.writer",
  "reid_jax.models.kinetics_weights",
  "reid_jax.models.torchvision_weights",
  "data_prep.build",
  "data_prep.builders",
)


def test_embed_imports_no_training_module(trained, tmp_path):
  """An `embed` run restores the model part of a checkpoint: nothing of training is loaded."""
  import subprocess
  import sys

  videos, _ = _scene(tmp_path)
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      _EMBED_AND_LIST_MODULES,
      tests_dir,
      str(tmp_path / "no_data"),
      str(videos),
      str(trained),
      str(tmp_path / "e.npz"),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = result.stdout.split()
  assert "reid_jax.inference.model" in loaded and "reid_jax.footage.embed" in loaded
  assert [m for m in TRAINING_MODULES if m in loaded] == []
  assert (tmp_path / "e.npz").exists()


# ---------------------------------------------------------------------------------------------
# Damaged videos, checks before the model, several videos, strides


def _embed(data_dir, workdir, footage, output, **overrides):
  config = tiny_config(
    data_dir,
    mode="embed",
    **{"embed.input": str(footage), "embed.output": str(output), **overrides},
  )
  return embed_lib.load_embeddings(embed_lib.run(config, str(workdir)))


def _by_name(embedded):
  return {
    str(n): (f, int(k))
    for n, f, k in zip(embedded["names"], embedded["features"], embedded["num_frames"])
  }


@pytest.mark.parametrize("codec, ext", [("mpeg4", ".avi"), ("libx264", ".mp4")])
def test_a_damaged_video_never_moves_a_box(data_dir, trained, tmp_path, codec, ext, caplog):
  """Damage the container shows (the AVI: frames missing) is found before the model is
  restored; damage only the decoder sees (the MP4: data zeroed, its index intact) while
  embedding. Either way the boxes from the damaged frame on are not placed: tracks wholly before
  it keep the intact video's features, and no track keeps its full length with others."""
  from reid_jax.footage.videos import VideoDamaged

  from footage_videos import damage, scene_video

  intact = _by_name(
    _embed(
      data_dir, trained, scene_video(tmp_path / "intact" / f"cam{ext}", codec), tmp_path / "i.npz"
    )
  )
  # A copy of the same file, damaged: two encodings of the same frames are not the same bytes
  # (libx264's threads), so only a copy tells damage from encoding.
  (tmp_path / "damaged").mkdir()
  video = str(tmp_path / "damaged" / f"cam{ext}")
  for suffix in (ext, ".txt"):
    shutil.copyfile(tmp_path / "intact" / f"cam{suffix}", tmp_path / "damaged" / f"cam{suffix}")
  damage(video)
  with pytest.raises(VideoDamaged, match=rf"cam{ext} is damaged from frame \d+"):
    _embed(data_dir, trained, tmp_path / "damaged", tmp_path / "d.npz")
  if ext == ".avi":  # found before anything else: even without a checkpoint
    with pytest.raises(VideoDamaged):
      _embed(data_dir, tmp_path / "no_run", tmp_path / "damaged", tmp_path / "d.npz")
  with caplog.at_level(logging.WARNING, logger="reid_jax"):
    embedded = _embed(
      data_dir, trained, tmp_path / "damaged", tmp_path / "d.npz", **{"embed.skip_bad": True}
    )
  damaged = _by_name(embedded)
  np.testing.assert_allclose(damaged["cam:1"][0], intact["cam:1"][0], atol=1e-6)
  assert damaged["cam:1"][1] == 20 and "cam:3" not in damaged
  for name, (features, length) in damaged.items():
    assert length < intact[name][1] or np.allclose(features, intact[name][0], atol=1e-6), name
  if ext == ".mp4":
    assert "embedding again without those boxes" in caplog.text
    assert list(embedded["meta"]["damaged"]) == [video]


def test_bad_footage_and_outputs_fail_before_the_model_is_restored(data_dir, tmp_path):
  """In a workdir without a checkpoint, the footage's and the output's errors come first."""
  from data_prep.files import UnwritableOutput

  save_frame(str(tmp_path / "in" / "t" / "1.jpg"), np.zeros((8, 4, 3), np.uint8))
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(UnwritableOutput, match="a_file is a file, not a folder"):
    _embed(data_dir, tmp_path / "no_run", tmp_path / "in", tmp_path / "a_file" / "e.npz")
  (tmp_path / "in" / "t" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
  with pytest.raises(FootageError, match="2.jpg: unreadable frame"):
    _embed(data_dir, tmp_path / "no_run", tmp_path / "in", tmp_path / "e.npz")
  assert not (tmp_path / "no_run").exists()


def test_several_videos_at_once_embed_as_each_alone(data_dir, trained, tmp_path):
  from footage_videos import scene_video

  for name in ("north", "south"):
    scene_video(tmp_path / "both" / f"{name}.mkv", "ffv1", frames=40)
    scene_video(tmp_path / name / f"{name}.mkv", "ffv1", frames=40)
  both = _by_name(_embed(data_dir, trained, tmp_path / "both", tmp_path / "b.npz"))
  for name in ("north", "south"):
    alone = _by_name(_embed(data_dir, trained, tmp_path / name, tmp_path / f"{name}.npz"))
    for track, (features, length) in alone.items():
      assert both[track][1] == length
      np.testing.assert_allclose(both[track][0], features, atol=1e-6)


def test_a_frame_stride_embeds_every_nth_frame(data_dir, trained, tmp_path):
  rng = np.random.default_rng(4)
  for frame in range(1, 10):
    save_frame(
      str(tmp_path / "in" / "p" / f"{frame}.png"), rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)
    )
  dense = _embed(data_dir, trained, tmp_path / "in", tmp_path / "d.npz")
  strided = _embed(
    data_dir, trained, tmp_path / "in", tmp_path / "s.npz", **{"embed.frame_stride": 2}
  )
  assert dense["num_frames"].tolist() == [9] and strided["num_frames"].tolist() == [5]
  assert strided["meta"]["frame_stride"] == 2
  assert not np.allclose(dense["features"], strided["features"])


def test_calibrate_works_on_any_labelled_data_warns_on_few_pairs_and_keeps_the_last(
  data_dir, trained, tmp_path, caplog
):
  import glob
  import json

  from reid_jax.evaluation import calibrate as calibrate_lib

  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(os.path.join(str(trained), "checkpoints"), workdir / "checkpoints")
  # More identities per batch than the dataset has: training could not, calibrating can.
  config = tiny_config(data_dir, mode="calibrate", **{"data.P": 64})
  with caplog.at_level(logging.WARNING, logger="reid_jax"):
    first = calibrate_lib.run(config, str(workdir))
  assert first["same_person_pairs"] < calibrate_lib.FEW_PAIRS
  assert f"rests on {first['same_person_pairs']} same-person pairs" in caplog.text
  assert first["warnings"] and len(first["fingerprint"]) == 16
  second = calibrate_lib.run(config, str(workdir))
  kept = glob.glob(str(workdir / "threshold-*.json"))
  assert len(kept) == 1 and json.load(open(kept[0])) == first
  assert json.load(open(workdir / "threshold.json")) == second
