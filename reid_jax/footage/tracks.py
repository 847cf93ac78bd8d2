"""Tracks: what a tracklet of a user's footage is, the track files trackers and benchmarks write,
and the count of what was left out.

Track files hold one box per line, comma separated, frames 1-based:

    frame,id,left,top,width,height,score,-1,-1,-1       a tracker (ByteTrack, BoT-SORT, DeepSORT)
    frame,-1,left,top,width,height,score,-1,-1,-1       detections without an identity (id -1)
    frame,id,left,top,width,height,consider,class,visibility    MOTChallenge ground truth

A file whose every line has those 9 fields, with a consider flag 0 or 1, an integer class and a
visibility in [0, 1], is ground truth: rows with flag 0 or a class other than pedestrian (1) are
left out, and so are boxes less visible than `min_visibility`. Rows with id -1 are detections
that no track claimed: never a track. Everything left out is counted (`Skipped`).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from data_prep.errors import UserError

log = logging.getLogger("reid_jax")

PEDESTRIAN = 1  # MOTChallenge ground truth's class of the people to track
NAMES_LOGGED = 10  # how many of the left-out files and folders the log names


class FootageError(UserError, ValueError):
  """A bad input; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Track:
  """One tracklet to embed.

  Attributes:
    name: the tracklet folder (relative to the root), or `<video stem>:<track id>`.
    camera: the camera folder or the video stem ("" for tracklets of an unnamed camera).
    source: the tracklet folder, or the video file.
    frame_numbers: [n] the frames' numbers (from the names; for videos, 1-based frame indices in
      the video's presentation order).
    paths: [n] the frame files of a folder (None for a video).
    boxes: float [n, 4] `left, top, width, height` in the video's pixels (None for a folder).
    video: the probe of a track's video (`videos.VideoProbe`; None for a folder).
  """

  name: str
  camera: str
  source: str
  frame_numbers: np.ndarray
  paths: tuple[str, ...] | None = None
  boxes: np.ndarray | None = None
  video: object | None = None

  @property
  def num_frames(self) -> int:
    return len(self.frame_numbers)

  @property
  def timed(self) -> bool:
    """Whether its frame numbers are times in one video (two tracks of one video that overlap
    in time are two people)."""
    return self.paths is None

  def keep(self, rows: np.ndarray) -> Track:
    """The track with only the frames `rows` (indices or a mask)."""
    return dataclasses.replace(
      self,
      frame_numbers=self.frame_numbers[rows],
      paths=None if self.paths is None else tuple(np.asarray(self.paths, object)[rows]),
      boxes=None if self.boxes is None else self.boxes[rows],
    )

  def every(self, stride: int) -> Track:
    """Every `stride`-th frame, from the first."""
    return self if stride == 1 else self.keep(np.arange(0, self.num_frames, stride))


@dataclasses.dataclass
class Skipped:
  """What was left out of the footage, counted (and for files and folders, named) for the log."""

  unidentified: int = 0  # rows with id -1: detections no track claimed
  not_considered: int = 0  # ground-truth rows with the consider flag 0
  other_classes: int = 0  # ground-truth rows of another class than pedestrian
  occluded: int = 0  # ground-truth rows under `min_visibility`
  lines: int = 0  # malformed track-file lines (skip_bad)
  boxes: int = 0  # boxes wholly outside their frame (skip_bad)
  unplaceable: int = 0  # boxes of a damaged or too short video's frames (skip_bad)
  unreadable_frames: int = 0  # frame files that do not decode (skip_bad)
  short_tracks: int = 0  # tracks under `min_length` frames
  unused: list[str] = dataclasses.field(default_factory=list)  # files and folders not read

  def log(self) -> None:
    counts = [
      (self.unidentified, "track-file rows with id -1 (detections without a track)"),
      (self.not_considered, "ground-truth rows with the consider flag 0"),
      (self.other_classes, "ground-truth rows of other classes than pedestrian"),
      (self.occluded, "ground-truth boxes under embed.min_visibility"),
      (self.lines, "malformed track-file lines"),
      (self.boxes, "boxes wholly outside their frame"),
      (self.unplaceable, "boxes of frames a damaged or too short video cannot place"),
      (self.unreadable_frames, "unreadable frames"),
      (self.short_tracks, "tracks shorter than embed.min_length"),
    ]
    for count, what in counts:
      if count:
        log.warning("Skipped %d %s", count, what)
    if self.unused:
      shown = ", ".join(self.unused[:NAMES_LOGGED])
      more = (
        f" and {len(self.unused) - NAMES_LOGGED} more" if len(self.unused) > NAMES_LOGGED else ""
      )
      log.warning(
        "Left out %d files and folders that are no frames or videos: %s%s",
        len(self.unused),
        shown,
        more,
      )


def _is_ground_truth(fields: list[list[str]]) -> bool:
  """Every line has MOTChallenge ground truth's 9 fields with a flag, a class, a visibility."""
  try:
    return bool(fields) and all(
      len(f) == 9
      and f[6] in ("0", "1")
      and float(f[7]) == int(float(f[7]))
      and 0 <= float(f[8]) <= 1
      for f in fields
    )
  except ValueError:
    return False


def parse_mot(
  path: str, *, skip_bad: bool = False, skipped: Skipped | None = None, min_visibility: float = 0.0
) -> dict:
  """`{track id: (frame numbers [n], boxes float [n, 4])}` of a track file (see the module
  docstring), each track sorted by frame. A malformed line (too few fields, not numbers,
  frame < 1, a box without area, a (frame, id) given twice) is an error naming the line, or
  skipped and counted."""
  skipped = skipped if skipped is not None else Skipped()
  if not os.path.isfile(path):
    raise FootageError(f"{path}: no track file (MOTChallenge `frame,id,left,top,width,height`)")
  with open(path) as f:
    lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
  fields = [[v.strip() for v in text.split(",")] for _, text in lines]
  ground_truth = _is_ground_truth(fields)
  if min_visibility > 0 and not ground_truth:
    log.warning("%s carries no visibility: embed.min_visibility does not apply to it", path)
  rows: dict[int, dict[int, tuple]] = {}
  for (line_number, text), values in zip(lines, fields):
    try:
      if len(values) < 6:
        raise ValueError(f"{len(values)} fields, need at least 6")
      frame, track = int(float(values[0])), int(float(values[1]))
      if frame != float(values[0]) or track != float(values[1]):
        raise ValueError("frame and id must be integers")
      left, top, width, height = (float(v) for v in values[2:6])
      if frame < 1:
        raise ValueError(f"frame {frame}: frames are 1-based")
      if not (np.isfinite([left, top, width, height]).all() and width > 0 and height > 0):
        raise ValueError("the box has no area")
      if track == -1:
        skipped.unidentified += 1
        continue
      if ground_truth:
        if values[6] == "0":
          skipped.not_considered += 1
          continue
        if int(float(values[7])) != PEDESTRIAN:
          skipped.other_classes += 1
          continue
        if float(values[8]) < min_visibility:
          skipped.occluded += 1
          continue
      if frame in rows.setdefault(track, {}):
        raise ValueError(f"track {track} has a second box in frame {frame}")
    except ValueError as e:
      if not skip_bad:
        raise FootageError(f"{path}:{line_number}: {e}: {text!r}") from None
      skipped.lines += 1
      continue
    rows[track][frame] = (left, top, width, height)
  out = {}
  for track in sorted(rows):
    if not rows[track]:
      continue
    frames = sorted(rows[track])
    out[track] = (np.array(frames, np.int64), np.array([rows[track][f] for f in frames]))
  return out
