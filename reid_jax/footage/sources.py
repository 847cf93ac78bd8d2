"""A user's footage as tracklets: folders of crops, or videos with MOTChallenge track files, and
`FootageTracklets`, the chunk stream's source over them.

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

Reading: image files are decoded by the one image decoder (`reid_jax.data.frames`), many chunks
at once in tf.data's thread pool; a video is decoded once, sequentially (PyAV), and each box is
cut from its frame and resized by the same resize.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from collections.abc import Iterator

import numpy as np

from data_prep.errors import UserError

log = logging.getLogger("reid_jax")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class FootageError(UserError, ValueError):
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


class FootageTracklets:
  """Tracks of a user's footage (`discover`'s output) as a source of the chunk stream
  (`reid_jax.inference.chunks`): row i is `tracks[i]`. A video's tracks are read together, from
  one decoding pass; every tracklet folder alone."""

  def __init__(self, tracks: list[Track]):
    self.tracks = list(tracks)
    self._rows_of: dict[str, list[int]] = {}
    for row, track in enumerate(self.tracks):
      key = track.source if track.paths is None else f"folder {row}"
      self._rows_of.setdefault(key, []).append(row)

  @property
  def num_frames(self) -> np.ndarray:
    return np.array([t.num_frames for t in self.tracks], np.int64)

  def groups(self) -> list[np.ndarray]:
    return [np.array(rows, np.int64) for rows in self._rows_of.values()]

  def clips(self, plan, height: int, width: int, block: int) -> Iterator:
    """Runs of chunks of folder tracks are decoded in parallel; each video in one pass."""

    def video_of(chunk: int) -> str | None:
      track = self.tracks[plan.tracklet[chunk]]
      return track.source if track.paths is None else None

    for video, run in itertools.groupby(range(len(plan)), key=video_of):
      ids = np.fromiter(run, np.int64)
      if video is None:
        yield from self._folder_clips(plan, ids, height, width, block)
      else:
        yield from self._video_clips(plan, ids, height, width)

  def _folder_clips(self, plan, ids: np.ndarray, height: int, width: int, block: int):
    from reid_jax.data import frames as frames_lib

    def path(chunk: int, slot: int) -> str:
      return self.tracks[plan.tracklet[chunk]].paths[plan.positions[chunk, slot]]

    def blocks():
      for first in range(0, len(ids), block):
        chunk_ids = ids[first : first + block]
        encoded = np.empty((len(chunk_ids), plan.num_frames), object)
        for i, chunk in enumerate(chunk_ids):
          for slot in range(plan.num_frames):
            try:
              with open(path(chunk, slot), "rb") as f:
                encoded[i, slot] = f.read()
            except OSError as e:
              raise FootageError(f"{path(chunk, slot)}: unreadable frame ({e.strerror})") from None
        yield chunk_ids, encoded

    try:
      yield from frames_lib.decode_chunks(blocks(), block=block, height=height, width=width)
    except frames_lib.UndecodableFrame as e:
      raise FootageError(f"{path(e.chunk, e.slot)}: unreadable frame ({e.reason})") from None

  def _video_clips(self, plan, ids: np.ndarray, height: int, width: int):
    """The chunks `ids` (all of one video's tracks) from one sequential decoding pass."""
    import av

    from reid_jax.data import frames as frames_lib

    video = self.tracks[plan.tracklet[ids[0]]].source
    T = plan.num_frames
    needs: dict[int, list[tuple[int, int, int]]] = {}  # frame -> [(chunk, slot, position)]
    for chunk in ids:
      track = self.tracks[plan.tracklet[chunk]]
      for slot in range(T):
        position = int(plan.positions[chunk, slot])
        needs.setdefault(int(track.frame_numbers[position]), []).append((chunk, slot, position))
    last = max(needs)
    buffers: dict[int, np.ndarray] = {}
    missing = {int(chunk): T for chunk in ids}
    decoded = 0
    try:
      with av.open(video) as container:
        for decoded, frame in enumerate(container.decode(video=0), start=1):
          if decoded > last:
            break
          if decoded not in needs:
            continue
          image = frame.to_ndarray(format="rgb24")
          resized: dict[tuple[int, int], np.ndarray] = {}
          for chunk, slot, position in needs[decoded]:
            row = int(plan.tracklet[chunk])
            if (row, position) not in resized:
              track = self.tracks[row]
              where = f"{video} frame {decoded} ({track.name})"
              box = crop(image, track.boxes[position], where)
              resized[row, position] = frames_lib.resize_frame(box, height, width).numpy()
            buffers.setdefault(chunk, np.empty((T, height, width, 3), np.uint8))
            buffers[chunk][slot] = resized[row, position]
            missing[chunk] -= 1
            if not missing[chunk]:
              yield np.array([chunk]), buffers.pop(chunk)[None]
    except FootageError:
      raise
    except Exception as e:  # PyAV raises many types for damaged streams.
      raise FootageError(
        f"{video}: unreadable at frame {decoded + 1} ({type(e).__name__}: {e})"
      ) from None
    if decoded < last:
      raise FootageError(
        f"{video} has {decoded} frames, but its track file has boxes up to frame {last}"
      )

  def frames(self, row: int, count: int) -> list[np.ndarray]:
    """Up to `count` frames spread evenly over tracklet `row` (uint8 `[h, w, 3]` each, as cut
    from the footage, so of their own sizes): for ranked sheets."""
    from reid_jax.data import frames as frames_lib

    track = self.tracks[row]
    picked = np.unique(np.linspace(0, track.num_frames - 1, min(count, track.num_frames)).round())
    picked = picked.astype(int)
    if track.paths is not None:
      images = []
      for i in picked:
        with open(track.paths[i], "rb") as f:
          images.append(frames_lib.decode_frame(f.read()).numpy())
    else:
      import av

      wanted = {int(track.frame_numbers[i]): i for i in picked}
      images = []
      with av.open(track.source) as container:
        for number, frame in enumerate(container.decode(video=0), start=1):
          if number in wanted:
            where = f"{track.source} frame {number} ({track.name})"
            images.append(
              crop(frame.to_ndarray(format="rgb24"), track.boxes[wanted[number]], where)
            )
          if number >= max(wanted):
            break
    return images
