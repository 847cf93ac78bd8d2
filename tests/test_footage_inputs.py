"""A user's footage as trackers and cameras leave it: track files of trackers, detectors and
MOTChallenge ground truth; folders of any frame format; nothing left out without a word."""

import logging

import numpy as np
import pytest
from PIL import Image

from reid_jax.footage.sources import FootageError, FootageTracklets, check_frames, discover
from reid_jax.footage.tracks import Skipped, parse_mot
from reid_jax.inference import chunks

from footage_videos import damage, save_frame, scene_video, write_lines, write_video

# ---------------------------------------------------------------------------------------------
# Track files


def test_detections_without_a_track_id_are_never_a_track(tmp_path):
  # As ByteTrack writes its output, with its unconfirmed detections (id -1) kept.
  path = write_lines(
    tmp_path / "cam.txt",
    [
      "1,-1,0,0,10,20,0.40,-1,-1,-1",
      "1,3,5,5,10,20,0.91,-1,-1,-1",
      "2,-1,30,0,10,20,0.30,-1,-1,-1",
      "2,3,6,5,10,20,0.90,-1,-1,-1",
    ],
  )
  for skip_bad in (False, True):
    skipped = Skipped()
    tracks = parse_mot(path, skip_bad=skip_bad, skipped=skipped)
    assert list(tracks) == [3] and skipped.unidentified == 2 and skipped.lines == 0


def test_mot_ground_truth_leaves_out_what_it_does_not_consider(tmp_path, caplog):
  # MOT17 gt: frame, id, box, consider flag, class, visibility.
  path = write_lines(
    tmp_path / "gt.txt",
    [
      "1,1,0,0,10,20,1,1,1.0",
      "2,1,1,0,10,20,1,1,0.2",  # occluded
      "1,2,20,0,10,20,0,1,1.0",  # not considered
      "1,3,40,0,30,20,1,3,1.0",  # a car
      "3,1,2,0,10,20,1,1,0.9",
    ],
  )
  skipped = Skipped()
  tracks = parse_mot(path, skipped=skipped, min_visibility=0.5)
  assert list(tracks) == [1]
  np.testing.assert_array_equal(tracks[1][0], [1, 3])
  assert (skipped.not_considered, skipped.other_classes, skipped.occluded) == (1, 1, 1)
  tracks = parse_mot(path, skipped=Skipped())
  np.testing.assert_array_equal(tracks[1][0], [1, 2, 3])  # visibility not asked for
  tracker = write_lines(tmp_path / "tracker.txt", ["1,1,0,0,10,20,0.9,-1,-1,-1"])
  with caplog.at_level(logging.WARNING, logger="reid_jax"):
    parse_mot(tracker, skipped=Skipped(), min_visibility=0.5)
  assert "carries no visibility" in caplog.text


# ---------------------------------------------------------------------------------------------
# Folders and roots


@pytest.mark.parametrize("fmt, ext", [("BMP", ".bmp"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_frames_of_any_format_pil_reads_are_read(tmp_path, fmt, ext):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (16, 8, 3), dtype=np.uint8) for _ in range(2)]
  for n, image in enumerate(images):
    save_frame(tmp_path / "in" / "walker" / f"{n}{ext}", image, fmt=fmt if fmt != "WEBP" else None)
  if fmt == "WEBP":  # lossless, so the pixels can be compared
    for n, image in enumerate(images):
      Image.fromarray(image).save(tmp_path / "in" / "walker" / f"{n}{ext}", lossless=True)
  tracks, skipped = discover(str(tmp_path / "in"))
  assert [t.num_frames for t in tracks] == [2] and not skipped.unused
  batch = next(
    chunks.chunk_batches(FootageTracklets(tracks), num_frames=2, height=16, width=8, batch_size=1)
  )
  np.testing.assert_array_equal(batch["clips"][0], np.stack(images))


def test_what_is_not_read_is_named(tmp_path, caplog):
  save_frame(tmp_path / "in" / "walker" / "1.jpg")
  (tmp_path / "in" / "walker" / "notes.txt").write_text("x")
  (tmp_path / "in" / ".DS_Store").write_text("x")
  (tmp_path / "in" / "readme.md").write_text("x")
  (tmp_path / "in" / "lost.txt").write_text("1,1,0,0,4,4")  # a track file without its video
  tracks, skipped = discover(str(tmp_path / "in"))
  assert [t.name for t in tracks] == ["walker"]
  names = sorted(p.split("/in/")[1] for p in skipped.unused)
  assert names == [".DS_Store", "lost.txt", "readme.md", "walker/notes.txt"]
  with caplog.at_level(logging.WARNING, logger="reid_jax"):
    skipped.log()
  assert "Left out 4 files and folders" in caplog.text and "walker/notes.txt" in caplog.text


def test_ambiguous_layouts_are_errors_naming_them(tmp_path):
  save_frame(tmp_path / "a" / "cam1" / "t1" / "1.jpg")
  save_frame(tmp_path / "a" / "cam1" / "t2" / "1.jpg")
  save_frame(tmp_path / "a" / "cam1" / "0001.jpg")  # a stray frame beside the camera's tracklets
  with pytest.raises(FootageError, match=r"cam1 holds both frames \(0001.jpg, ...\) and folders"):
    discover(str(tmp_path / "a"))
  save_frame(tmp_path / "b" / "cam1" / "t1" / "deeper" / "1.jpg")
  with pytest.raises(FootageError, match="deeper: a folder inside the tracklet"):
    discover(str(tmp_path / "b"))
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
  write_video(tmp_path / "c" / "camera1.mp4", frames, codec="mpeg4")
  write_video(tmp_path / "c" / "camera1.mkv", frames)
  write_lines(tmp_path / "c" / "camera1.txt", ["1,1,0,0,4,4"])
  with pytest.raises(FootageError, match=r"camera1.mkv and .*camera1.mp4 share the stem"):
    discover(str(tmp_path / "c"))


def test_tracklet_folders_beside_videos_are_both_read(tmp_path):
  rng = np.random.default_rng(0)
  frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
  write_video(tmp_path / "in" / "gate.mkv", frames)
  write_lines(tmp_path / "in" / "gate.txt", ["1,1,0,0,4,4", "2,1,0,0,4,4"])
  save_frame(tmp_path / "in" / "walker" / "1.jpg")
  tracks, skipped = discover(str(tmp_path / "in"))
  assert [t.name for t in tracks] == ["gate:1", "walker"] and not skipped.unused


def test_an_unreadable_frame_is_named_or_skipped_before_any_decoding(tmp_path):
  save_frame(tmp_path / "in" / "t" / "1.jpg")
  save_frame(tmp_path / "in" / "t" / "2.jpg")
  good = (tmp_path / "in" / "t" / "2.jpg").read_bytes()
  (tmp_path / "in" / "t" / "2.jpg").write_bytes(good[: len(good) // 2])  # cut short
  (tmp_path / "in" / "u" / "1.png").parent.mkdir()
  (tmp_path / "in" / "u" / "1.png").write_bytes(b"\x89PNG not really")
  tracks, skipped = discover(str(tmp_path / "in"))
  with pytest.raises(FootageError, match=r"in/t/2.jpg: unreadable frame"):
    check_frames(tracks, skip_bad=False, skipped=skipped)
  kept = check_frames(tracks, skip_bad=True, skipped=skipped)
  assert [(t.name, t.num_frames) for t in kept] == [("t", 1)]
  assert skipped.unreadable_frames == 2 and skipped.short_tracks == 1


# ---------------------------------------------------------------------------------------------
# Damaged videos


@pytest.mark.parametrize("codec, ext", [("mpeg4", ".avi"), ("ffv1", ".mkv")])
def test_container_damage_is_found_before_any_box_is_placed(tmp_path, codec, ext):
  from reid_jax.footage.videos import VideoDamaged, probe_video

  video = scene_video(tmp_path / "in" / f"cam{ext}", codec=codec)
  assert probe_video(video).damaged_from is None
  damage(video)
  probe = probe_video(video)
  assert probe.damaged_from is not None and 26 <= probe.damaged_from <= 70, probe
  with pytest.raises(VideoDamaged, match=rf"cam{ext} is damaged from frame {probe.damaged_from}"):
    discover(str(tmp_path / "in"))
  tracks, skipped = discover(str(tmp_path / "in"), skip_bad=True)
  lengths = {t.name: t.num_frames for t in tracks}
  # Track 1 lies before the damage, whole; track 2 keeps what lies before it; track 3 is gone.
  assert lengths == {"cam:1": 20, "cam:2": probe.damaged_from - 25}
  assert skipped.unplaceable == (70 - probe.damaged_from + 1) + 16
