"""A user's footage as tracklets: folders of crops, or videos with MOTChallenge track files.

    ROOT/<tracklet>/<frames>             tracklets of one unnamed camera
    ROOT/<camera>/<tracklet>/<frames>    tracklets per camera
    ROOT/<video>.mp4 + ROOT/<video>.txt  videos, each with its tracker's output beside it
    VIDEO.mp4 (+ a track file)           one video

Frames of a folder are jpg/png files ordered by the last number in their names (never by listing
order). A track file has one box per line, `frame,id,left,top,width,height[,conf,...]` with
1-based frame numbers, as ByteTrack, BoT-SORT and DeepSORT write them. Everything is read and
checked here, before any frame is decoded: a bad input is named (file, and line for track files)
or, with `skip_bad`, skipped and counted: malformed track-file lines and boxes wholly outside
their frame (boxes over the edge are clipped). Unreadable videos and frames are always errors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np

log = logging.getLogger("reid_jax")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class FootageError(ValueError):
  """A bad input; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Track:
  """One tracklet to embed.

  Attributes:
    name: the tracklet folder (relative to the root), or `<video stem>:<track id>`.
    camera: the camera folder or the video stem ("" for tracklets of an unnamed camera).
    source: the tracklet folder, or the video file.
    frame_numbers: [n] the frames' numbers (from the names; for videos, 1-based frame indices).
    paths: [n] the frame files of a folder (None for a video).
    boxes: float [n, 4] `left, top, width, height` in the video's pixels (None for a folder).
  """

  name: str
  camera: str
  source: str
  frame_numbers: np.ndarray
  paths: tuple[str, ...] | None = None
  boxes: np.ndarray | None = None

  @property
  def num_frames(self) -> int:
    return len(self.frame_numbers)


@dataclasses.dataclass
class Skipped:
  """What `skip_bad` dropped, counted for the log."""

  lines: int = 0
  boxes: int = 0
  short_tracks: int = 0

  def log(self) -> None:
    if self.lines:
      log.warning("Skipped %d malformed track-file lines", self.lines)
    if self.boxes:
      log.warning("Skipped %d boxes wholly outside their frame", self.boxes)
    if self.short_tracks:
      log.info("Skipped %d tracks shorter than the minimum length", self.short_tracks)


def discover(
  path: str, *, tracks: str = "", min_length: int = 1, skip_bad: bool = False
) -> tuple[list[Track], Skipped]:
  """The tracklets under `path` (see the module docstring), in a deterministic order.

  Args:
    path: a folder of tracklets, of camera folders, of videos, or one video file.
    tracks: for one video, its track file (default `<video stem>.txt` beside it).
    min_length: tracks with fewer frames are left out (counted).
    skip_bad: skip malformed track-file lines (counted) instead of failing.
  """
  skipped = Skipped()
  if os.path.isfile(path):
    if not path.lower().endswith(VIDEO_EXTENSIONS):
      raise FootageError(f"{path}: not a video ({', '.join(VIDEO_EXTENSIONS)}) nor a folder")
    found = _video_tracks(path, tracks or _beside(path), skip_bad, skipped)
  elif os.path.isdir(path):
    if tracks:
      raise FootageError(f"a track file ({tracks}) goes with one video, but {path} is a folder")
    names = sorted(os.listdir(path))
    videos = [n for n in names if n.lower().endswith(VIDEO_EXTENSIONS)]
    if videos:
      found = []
      for name in videos:
        video = os.path.join(path, name)
        found += _video_tracks(video, _beside(video), skip_bad, skipped)
    else:
      found = _folder_tracks(path, names)
  else:
    raise FootageError(f"{path}: no such file or folder")
  kept = [t for t in found if t.num_frames >= min_length]
  skipped.short_tracks += len(found) - len(kept)
  if not kept:
    raise FootageError(f"{path}: no tracklet of at least {min_length} frames")
  return kept, skipped


def _beside(video: str) -> str:
  return os.path.splitext(video)[0] + ".txt"


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _folder_tracks(root: str, names: list[str]) -> list[Track]:
  folders = [n for n in names if os.path.isdir(os.path.join(root, n))]
  if not folders:
    raise FootageError(f"{root}: holds no videos and no tracklet folders")
  tracks = []
  for name in folders:
    folder = os.path.join(root, name)
    entries = sorted(os.listdir(folder))
    if any(_is_image(e) for e in entries):  # ROOT/<tracklet>/<frames>
      tracks.append(_folder_track(folder, name, ""))
      continue
    for tracklet in entries:  # ROOT/<camera>/<tracklet>/<frames>
      sub = os.path.join(folder, tracklet)
      if os.path.isdir(sub):
        tracks.append(_folder_track(sub, f"{name}/{tracklet}", name))
  if not tracks:
    raise FootageError(f"{root}: no folder of jpg/png frames found")
  return tracks


def _folder_track(folder: str, name: str, camera: str) -> Track:
  frames = []
  for entry in os.listdir(folder):
    if not _is_image(entry):
      continue
    m = _LAST_NUMBER.search(os.path.splitext(entry)[0])
    if m is None:
      raise FootageError(
        f"{os.path.join(folder, entry)}: no frame number in the name (frames are ordered by the "
        "last number in their names)"
      )
    frames.append((int(m[1]), os.path.join(folder, entry)))
  if not frames:
    raise FootageError(f"{folder}: an empty tracklet (no jpg/png frames)")
  frames.sort()
  numbers = np.array([n for n, _ in frames], np.int64)
  if (np.diff(numbers) == 0).any():
    same = [p for n, p in frames if (numbers == n).sum() > 1][:2]
    raise FootageError(f"{folder}: two frames share a frame number ({same[0]}, {same[1]})")
  return Track(name, camera, folder, numbers, paths=tuple(p for _, p in frames))


def parse_mot(path: str, *, skip_bad: bool = False, skipped: Skipped | None = None) -> dict:
  """`{track id: (frame numbers [n], boxes float [n, 4])}` of a MOTChallenge track file, each
  track sorted by frame. A malformed line (too few fields, not numbers, frame < 1, a box
  without area, a (frame, id) given twice) is an error naming the line, or skipped."""
  if not os.path.isfile(path):
    raise FootageError(f"{path}: no track file (MOTChallenge `frame,id,left,top,width,height`)")
  rows: dict[int, dict[int, tuple]] = {}
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      text = line.strip()
      if not text:
        continue
      try:
        fields = [v.strip() for v in text.split(",")]
        if len(fields) < 6:
          raise ValueError(f"{len(fields)} fields, need at least 6")
        frame, track = int(float(fields[0])), int(float(fields[1]))
        if frame != float(fields[0]) or track != float(fields[1]):
          raise ValueError("frame and id must be integers")
        left, top, width, height = (float(v) for v in fields[2:6])
        if frame < 1:
          raise ValueError(f"frame {frame}: frames are 1-based")
        if not (np.isfinite([left, top, width, height]).all() and width > 0 and height > 0):
          raise ValueError("the box has no area")
        if frame in rows.setdefault(track, {}):
          raise ValueError(f"track {track} has a second box in frame {frame}")
      except ValueError as e:
        if not skip_bad:
          raise FootageError(f"{path}:{line_number}: {e}: {text!r}") from None
        if skipped is not None:
          skipped.lines += 1
        continue
      rows[track][frame] = (left, top, width, height)
  out = {}
  for track in sorted(rows):
    frames = sorted(rows[track])
    out[track] = (np.array(frames, np.int64), np.array([rows[track][f] for f in frames]))
  return out


def video_size(video: str) -> tuple[int, int]:
  """(width, height) of a video's first video stream."""
  import av

  try:
    with av.open(video) as container:
      stream = container.streams.video[0]
      return stream.codec_context.width, stream.codec_context.height
  except Exception as e:  # PyAV raises many types for unreadable files; all mean the same here.
    raise FootageError(f"{video}: unreadable video ({type(e).__name__}: {e})") from None


def _video_tracks(video: str, track_file: str, skip_bad: bool, skipped: Skipped) -> list[Track]:
  stem = os.path.splitext(os.path.basename(video))[0]
  width, height = video_size(video)
  tracks = []
  for track, (frames, boxes) in parse_mot(track_file, skip_bad=skip_bad, skipped=skipped).items():
    inside = (
      (boxes[:, 0] < width)
      & (boxes[:, 1] < height)
      & (boxes[:, 0] + boxes[:, 2] > 0)
      & (boxes[:, 1] + boxes[:, 3] > 0)
    )
    if not inside.all():
      first = int(np.flatnonzero(~inside)[0])
      if not skip_bad:
        raise FootageError(
          f"{track_file}: track {track}'s box in frame {frames[first]} "
          f"{boxes[first].tolist()} lies outside the {width}x{height} frames of {video}"
        )
      skipped.boxes += int((~inside).sum())
      frames, boxes = frames[inside], boxes[inside]
    if len(frames):
      tracks.append(Track(f"{stem}:{track}", stem, video, frames, boxes=boxes))
  return tracks


def crop(frame: np.ndarray, box: np.ndarray, where: str) -> np.ndarray:
  """The box `left, top, width, height` of `frame` [H, W, 3], clipped to the frame (whole
  pixels: the box's edges rounded outwards). A box wholly outside (checked by `discover`
  already) is a FootageError."""
  height, width = frame.shape[:2]
  left, top = int(np.floor(box[0])), int(np.floor(box[1]))
  right, bottom = int(np.ceil(box[0] + box[2])), int(np.ceil(box[1] + box[3]))
  left, top = max(left, 0), max(top, 0)
  right, bottom = min(right, width), min(bottom, height)
  if right <= left or bottom <= top:
    raise FootageError(f"{where}: the box {box.tolist()} lies outside the {width}x{height} frame")
  return frame[top:bottom, left:right]
