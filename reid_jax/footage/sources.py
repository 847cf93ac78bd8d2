"""A user's footage as tracklets: folders of crops, videos with their trackers' files, or both, and
`FootageTracklets`, the chunk stream's source over them.

    ROOT/<tracklet>/<frames>             tracklets of one unnamed camera
    ROOT/<camera>/<tracklet>/<frames>    tracklets per camera
    ROOT/<video>.mp4 + ROOT/<video>.txt  videos, each with its tracker's file beside it
    VIDEO.mp4 (+ a track file)           one video

A root may hold videos and tracklet folders together. Frames are image files of any format PIL
reads, ordered by the last number in their names (never by listing order). Track files are those
of `tracks.py` (trackers' output, detections, MOTChallenge ground truth).

Everything is read and checked here, before the model is restored, and nothing is dropped without
a word:
- an ambiguous layout is an error naming it: a folder holding both frames and folders, a folder
  under a tracklet, an empty tracklet, two videos of one stem (they would share a track file), two
  tracklets of one name, a frame without a number or two frames of one number;
- a file that is neither a frame, a video nor a video's track file (notes, hidden files, a track
  file without its video) is left out and named in the log;
- a bad track line, a box wholly outside its frame, a frame file that does not decode, a box on a
  frame that a damaged or too short video cannot place (`videos.py`) is an error naming the file
  (and line or frame), or with `skip_bad` left out and counted. Boxes over the edge are clipped.

Reading: image files are decoded by the one image decoder (`reid_jax.data.frames`), many chunks at
once in tf.data's thread pool (formats TensorFlow does not decode are read by PIL and passed on
losslessly as PNG); videos are decoded sequentially with PyAV's threads, several at once, each
box cut from its frame and resized by the same resize in the decoding thread.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import os
import re
from collections.abc import Iterator
from concurrent import futures

import numpy as np
from PIL import Image

from reid_jax import ranked_sheets
from reid_jax.footage import videos as videos_lib
from reid_jax.footage.tracks import FootageError, Skipped, Track, parse_mot
from reid_jax.footage.videos import VideoDamaged
from reid_jax.inference.parallel import interleave, prefetch

log = logging.getLogger("reid_jax")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
# Formats the one image decoder reads directly; the other frame formats are PIL's.
TF_DECODED = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".webp")
_NOT_FRAMES = {".h5", ".hdf", ".grib", ".bufr", ".fit", ".fits", ".eps", ".ps", ".pdf", ".emf"}
FRAME_EXTENSIONS = tuple(
  sorted(
    set(TF_DECODED)
    | {
      ext
      for ext, fmt in Image.registered_extensions().items()
      if fmt in Image.OPEN and ext not in _NOT_FRAMES and ext not in VIDEO_EXTENSIONS
    }
  )
)
TRACK_FILE = ".txt"
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def _ext(name: str) -> str:
  return os.path.splitext(name)[1].lower()


def is_frame(name: str) -> bool:
  return _ext(name) in FRAME_EXTENSIONS and not name.startswith(".")


def is_video(name: str) -> bool:
  return _ext(name) in VIDEO_EXTENSIONS and not name.startswith(".")


def discover(
  path: str,
  *,
  tracks: str = "",
  min_length: int = 1,
  skip_bad: bool = False,
  min_visibility: float = 0.0,
  damaged: dict[str, tuple[int, str]] | None = None,
) -> tuple[list[Track], Skipped]:
  """The tracklets under `path` (see the module docstring), in a deterministic order.

  Args:
    path: a folder of tracklets, camera folders and/or videos, or one video file.
    tracks: for one video, its track file (default `<video stem>.txt` beside it).
    min_length: tracks with fewer frames are left out (counted).
    skip_bad: leave out (and count) bad track lines, boxes outside their frame and boxes a
      damaged or too short video cannot place, instead of failing.
    min_visibility: ground-truth boxes less visible than this are left out (counted).
    damaged: `{video: (frame, reason)}`: damage found while decoding, to respect as the
      container's own.
  """
  skipped = Skipped()
  read_video = lambda video, track_file: _video_tracks(
    video, track_file, skip_bad, skipped, min_visibility, (damaged or {}).get(video)
  )
  if os.path.isfile(path):
    if not is_video(os.path.basename(path)):
      raise FootageError(f"{path}: not a video ({', '.join(VIDEO_EXTENSIONS)}) nor a folder")
    found = read_video(path, tracks or _beside(path))
  elif os.path.isdir(path):
    if tracks:
      raise FootageError(f"a track file ({tracks}) goes with one video, but {path} is a folder")
    found = _folder_of_footage(path, read_video, skipped)
  else:
    raise FootageError(f"{path}: no such file or folder")
  _check_unique_names(found)
  kept = [t for t in found if t.num_frames >= min_length]
  skipped.short_tracks += len(found) - len(kept)
  if not kept:
    raise FootageError(f"{path}: no tracklet of at least {min_length} frames")
  return kept, skipped


def _beside(video: str) -> str:
  return os.path.splitext(video)[0] + TRACK_FILE


def _folder_of_footage(root: str, read_video, skipped: Skipped) -> list[Track]:
  names = sorted(os.listdir(root))
  video_names = [n for n in names if is_video(n) and os.path.isfile(os.path.join(root, n))]
  stems: dict[str, str] = {}
  for name in video_names:
    stem = os.path.splitext(name)[0]
    if stem in stems:
      raise FootageError(
        f"{os.path.join(root, stems[stem])} and {os.path.join(root, name)} share the stem "
        f"{stem!r} (and so one track file, {stem}{TRACK_FILE}): rename one"
      )
    stems[stem] = name
  found: list[Track] = []
  for name in video_names:
    found += read_video(os.path.join(root, name), _beside(os.path.join(root, name)))
  for name in names:
    full = os.path.join(root, name)
    if name in video_names:
      continue
    if name.startswith(".") or not os.path.isdir(full):
      used = _ext(name) == TRACK_FILE and os.path.splitext(name)[0] in stems
      if not used:
        skipped.unused.append(full)
      continue
    found += _tracklets_under(full, name, skipped)
  if not found:
    raise FootageError(f"{root}: holds no videos and no tracklet folders")
  return found


def _tracklets_under(folder: str, name: str, skipped: Skipped) -> list[Track]:
  """The tracklet `folder` (frames), or the tracklets of the camera `folder` (folders)."""
  entries = sorted(os.listdir(folder))
  frames = [e for e in entries if is_frame(e) and os.path.isfile(os.path.join(folder, e))]
  subfolders = [
    e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(folder, e))
  ]
  if frames and subfolders:
    raise FootageError(
      f"{folder} holds both frames ({frames[0]}, ...) and folders ({subfolders[0]}, ...): a "
      "folder is either a tracklet (frames) or a camera (tracklet folders)"
    )
  if frames:  # ROOT/<tracklet>/<frames>
    return [_folder_track(folder, name, "", entries, skipped)]
  if not subfolders:
    raise FootageError(f"{folder}: an empty tracklet (no frames)")
  skipped.unused += [os.path.join(folder, e) for e in entries if e not in subfolders]
  tracks = []
  for tracklet in subfolders:  # ROOT/<camera>/<tracklet>/<frames>
    sub = os.path.join(folder, tracklet)
    inner = sorted(os.listdir(sub))
    nested = [e for e in inner if not e.startswith(".") and os.path.isdir(os.path.join(sub, e))]
    if nested:
      raise FootageError(
        f"{os.path.join(sub, nested[0])}: a folder inside the tracklet {sub} (tracklets hold "
        "frames only)"
      )
    tracks.append(_folder_track(sub, f"{name}/{tracklet}", name, inner, skipped))
  return tracks


def _folder_track(folder: str, name: str, camera: str, entries, skipped: Skipped) -> Track:
  frames = []
  for entry in entries:
    path = os.path.join(folder, entry)
    if not is_frame(entry):
      skipped.unused.append(path)
      continue
    m = _LAST_NUMBER.search(os.path.splitext(entry)[0])
    if m is None:
      raise FootageError(
        f"{path}: no frame number in the name (frames are ordered by the last number in their "
        "names)"
      )
    frames.append((int(m[1]), path))
  if not frames:
    raise FootageError(f"{folder}: an empty tracklet (no frames)")
  frames.sort()
  numbers = np.array([n for n, _ in frames], np.int64)
  if (np.diff(numbers) == 0).any():
    same = [p for n, p in frames if (numbers == n).sum() > 1][:2]
    raise FootageError(f"{folder}: two frames share a frame number ({same[0]}, {same[1]})")
  return Track(name, camera, folder, numbers, paths=tuple(p for _, p in frames))


def _check_unique_names(tracks: list[Track]) -> None:
  seen: dict[str, Track] = {}
  for track in tracks:
    if track.name in seen:
      raise FootageError(
        f"two tracklets are called {track.name!r} ({seen[track.name].source} and "
        f"{track.source}): rename one"
      )
    seen[track.name] = track


def _video_tracks(
  video: str,
  track_file: str,
  skip_bad: bool,
  skipped: Skipped,
  min_visibility: float,
  damaged: tuple[int, str] | None,
) -> list[Track]:
  stem = os.path.splitext(os.path.basename(video))[0]
  probe = videos_lib.probe_video(video)
  if damaged and (probe.damaged_from is None or damaged[0] < probe.damaged_from):
    probe = dataclasses.replace(probe, damaged_from=damaged[0], damage=damaged[1])
  # Frames past the end, or from the first damaged one on, cannot be placed.
  placeable = probe.frames if probe.damaged_from is None else probe.damaged_from - 1
  rows = parse_mot(track_file, skip_bad=skip_bad, skipped=skipped, min_visibility=min_visibility)
  tracks = []
  for track, (frames, boxes) in rows.items():
    inside = (
      (boxes[:, 0] < probe.width)
      & (boxes[:, 1] < probe.height)
      & (boxes[:, 0] + boxes[:, 2] > 0)
      & (boxes[:, 1] + boxes[:, 3] > 0)
    )
    if not inside.all():
      first = int(np.flatnonzero(~inside)[0])
      if not skip_bad:
        raise FootageError(
          f"{track_file}: track {track}'s box in frame {frames[first]} "
          f"{boxes[first].tolist()} lies outside the {probe.width}x{probe.height} frames of "
          f"{video}"
        )
      skipped.boxes += int((~inside).sum())
      frames, boxes = frames[inside], boxes[inside]
    late = frames > placeable
    if late.any():
      if not skip_bad:
        if probe.damaged_from is not None:  # every late box is at or after the damage
          raise VideoDamaged(video, probe.damaged_from, probe.damage)
        raise FootageError(
          f"{video} has {probe.frames} frames, but its track file has boxes up to frame "
          f"{int(frames.max())}"
        )
      skipped.unplaceable += int(late.sum())
      frames, boxes = frames[~late], boxes[~late]
    if len(frames):
      tracks.append(Track(f"{stem}:{track}", stem, video, frames, boxes=boxes, video=probe))
  return tracks


def encoded_frame(path: str) -> bytes:
  """A frame file as bytes the one image decoder reads: the file itself, or for formats only PIL
  reads, its pixels as PNG (lossless)."""
  if _ext(path) in TF_DECODED:
    with open(path, "rb") as f:
      return f.read()
  with Image.open(path) as image:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def _frame_problem(path: str) -> str:
  """Why a frame file does not decode ("" when it does); JPEGs are decoded at 1/8 scale, which
  reads the whole file."""
  try:
    with Image.open(path) as image:
      image.draft("RGB", (1, 1))
      image.load()
    return ""
  except Exception as e:  # PIL raises many types for bad files
    return f"{type(e).__name__}: {e}"


def check_frames(tracks: list[Track], *, skip_bad: bool, skipped: Skipped) -> list[Track]:
  """`tracks` after checking that every frame file decodes (in threads): a bad one is an error
  naming it, or with `skip_bad` left out of its track (counted; a track left empty goes)."""
  paths = sorted({p for t in tracks if t.paths is not None for p in t.paths})
  with futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
    problems = dict(zip(paths, pool.map(_frame_problem, paths)))
  bad = {p: why for p, why in problems.items() if why}
  if not bad:
    return tracks
  if not skip_bad:
    path, why = next(iter(sorted(bad.items())))
    raise FootageError(f"{path}: unreadable frame ({why})")
  skipped.unreadable_frames += len(bad)
  out = []
  for track in tracks:
    if track.paths is None:
      out.append(track)
      continue
    keep = np.array([p not in bad for p in track.paths])
    if keep.any():
      out.append(track.keep(keep))
    else:
      skipped.short_tracks += 1
  return out


def pixel_box(shape, box: np.ndarray, where: str) -> tuple[int, int, int, int]:
  """`(top, left, bottom, right)` in whole pixels of the box `left, top, width, height` in a
  frame of `shape`, clipped to it (the box's edges rounded outwards). A box wholly outside
  (checked by `discover` already) is a FootageError."""
  height, width = shape[:2]
  left, top = int(np.floor(box[0])), int(np.floor(box[1]))
  right, bottom = int(np.ceil(box[0] + box[2])), int(np.ceil(box[1] + box[3]))
  left, top = max(left, 0), max(top, 0)
  right, bottom = min(right, width), min(bottom, height)
  if right <= left or bottom <= top:
    raise FootageError(f"{where}: the box {box.tolist()} lies outside the {width}x{height} frame")
  return top, left, bottom, right


def crop(frame: np.ndarray, box: np.ndarray, where: str) -> np.ndarray:
  """The box `left, top, width, height` of `frame` [H, W, 3] (see `pixel_box`)."""
  top, left, bottom, right = pixel_box(frame.shape, box, where)
  return frame[top:bottom, left:right]


class FootageTracklets:
  """Tracks of a user's footage (`discover`'s output) as a source of the chunk stream
  (`reid_jax.inference.chunks`): row i is `tracks[i]`. A video's tracks are read together, from
  one decoding pass; every tracklet folder alone. Videos and runs of folders are read in
  parallel, up to `workers` at once (default the CPU count)."""

  def __init__(self, tracks: list[Track], *, workers: int | None = None):
    self.tracks = list(tracks)
    self.workers = workers or os.cpu_count() or 1
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
    """Runs of chunks of folder tracks are decoded in parallel by tf.data; each video in one
    pass; the runs and videos themselves in parallel threads."""

    def video_of(chunk: int) -> str | None:
      track = self.tracks[plan.tracklet[chunk]]
      return track.source if track.paths is None else None

    readers = []
    for video, run in itertools.groupby(range(len(plan)), key=video_of):
      ids = np.fromiter(run, np.int64)
      if video is None:
        readers.append(lambda ids=ids: self._folder_clips(plan, ids, height, width, block))
      else:
        readers.append(lambda ids=ids: self._video_clips(plan, ids, height, width))
    yield from interleave(readers, workers=self.workers)

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
              encoded[i, slot] = encoded_frame(path(chunk, slot))
            except OSError as e:
              raise FootageError(f"{path(chunk, slot)}: unreadable frame ({e})") from None
        yield chunk_ids, encoded

    try:
      yield from frames_lib.decode_chunks(blocks(), block=block, height=height, width=width)
    except frames_lib.UndecodableFrame as e:
      raise FootageError(f"{path(e.chunk, e.slot)}: unreadable frame ({e.reason})") from None

  def _video_clips(self, plan, ids: np.ndarray, height: int, width: int):
    """The chunks `ids` (all of one video's tracks) from one decoding pass; the boxes of each
    frame cut and resized as it comes, beside the decoding thread."""
    from reid_jax.data import frames as frames_lib

    first_track = self.tracks[plan.tracklet[ids[0]]]
    T = plan.num_frames
    needs: dict[int, list[tuple[int, int, int]]] = {}  # frame -> [(chunk, slot, position)]
    for chunk in ids:
      track = self.tracks[plan.tracklet[chunk]]
      for slot in range(T):
        position = int(plan.positions[chunk, slot])
        needs.setdefault(int(track.frame_numbers[position]), []).append((chunk, slot, position))
    buffers: dict[int, np.ndarray] = {}
    missing = {int(chunk): T for chunk in ids}
    # Decoding runs in its own thread, a few frames ahead of the cutting here.
    frames = prefetch(
      videos_lib.decoded_frames(first_track.video, max(needs), wanted=needs.keys()), 4
    )
    for number, image in frames:
      here = needs.get(number, ())
      if not here:
        continue
      # Every box of this frame, cut and resized in one call.
      boxes = sorted({(int(plan.tracklet[chunk]), position) for chunk, _, position in here})
      windows = [
        pixel_box(
          image.shape,
          self.tracks[row].boxes[position],
          f"{self.tracks[row].source} frame {number} ({self.tracks[row].name})",
        )
        for row, position in boxes
      ]
      resized = dict(zip(boxes, frames_lib.crops_of(image, windows, height, width)))
      for chunk, slot, position in here:
        if chunk not in buffers:
          buffers[chunk] = np.empty((T, height, width, 3), np.uint8)
        buffers[chunk][slot] = resized[int(plan.tracklet[chunk]), position]
        missing[chunk] -= 1
        if not missing[chunk]:
          yield np.array([chunk]), buffers.pop(chunk)[None]

  def frames(self, row: int, count: int) -> list[np.ndarray]:
    """Up to `count` frames spread evenly over tracklet `row` as a sheet picks them
    (`ranked_sheets.shown_frames`; uint8 `[h, w, 3]` each, as cut from the footage, so of their
    own sizes): for ranked sheets."""
    from reid_jax.data import frames as frames_lib

    track = self.tracks[row]
    picked = ranked_sheets.shown_frames(range(track.num_frames), count)
    if track.paths is not None:
      return [frames_lib.decode_frame(encoded_frame(track.paths[i])).numpy() for i in picked]
    wanted = {int(track.frame_numbers[i]): i for i in picked}
    images = []
    for number, image in videos_lib.decoded_frames(track.video, max(wanted), wanted=wanted):
      where = f"{track.source} frame {number} ({track.name})"
      images.append(crop(image, track.boxes[wanted[number]], where))
    return images
