"""Videos: what a video file holds, where it is damaged, and its frames in presentation order.

A tracker numbers a video's frames as it decodes them (1, 2, ...). That number is a frame's place
in time only while the file is intact: where damage makes the decoder lose frames, every later
frame would get the number of an earlier one, and every later box would be cut from the wrong
picture. So a box is placed only on frames whose number is known to be right:

- `probe_video` reads the container without decoding: the frames it holds (their packets), the
  count its header declares, their timestamps. A demuxing error, a packet the container flags
  corrupt, a gap in the timestamps of a constant-rate stream (frames missing), or fewer frames
  than declared (the damage then located by one decoding pass) mark the video damaged from a
  frame on: no box of that frame or later is placed.
- `decoded_frames` yields the frames, numbered as the tracker counted them, and checks each one
  again: a decoder error, a frame the decoder flags corrupt, or a timestamp off its frame's place
  raises `VideoDamaged` naming the frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from data_prep.errors import require
from reid_jax.footage.tracks import FootageError

# Of a constant-rate stream's timestamp steps, at least this share is the nominal step; a step
# over 1.5 nominal ones is a gap (frames missing).
REGULAR_SHARE = 0.9


class VideoDamaged(FootageError):
  """A video is damaged from `frame` on (its boxes there cannot be placed)."""

  def __init__(self, video: str, frame: int, reason: str):
    super().__init__(
      f"{video} is damaged from frame {frame} ({reason}): boxes of that frame and later cannot "
      "be placed on the right frames; --config.embed.skip_bad=True leaves them out"
    )
    self.video, self.frame, self.reason = video, frame, reason


@dataclasses.dataclass(frozen=True)
class VideoProbe:
  """What `probe_video` found.

  Attributes:
    frames: the frames the file holds (its video packets).
    declared: the frames its header declares (0: it declares none).
    pts_step, first_pts: a constant-rate stream's timestamp step and first timestamp (None:
      variable rate or no timestamps; frames are then placed by their count alone).
    damaged_from: the first frame whose number cannot be trusted (None: intact).
    damage: why.
  """

  path: str
  width: int
  height: int
  frames: int
  declared: int
  pts_step: int | None
  first_pts: int | None
  damaged_from: int | None = None
  damage: str = ""


def _open(path: str):
  av = require("av", "video", f"reading {path} (a video)")

  try:
    container = av.open(path)
    stream = container.streams.video[0]
  except Exception as e:  # PyAV raises many types for unreadable files; all mean the same here.
    raise FootageError(f"{path}: unreadable video ({type(e).__name__}: {e})") from None
  return container, stream


def probe_video(path: str) -> VideoProbe:
  """The frames, declared count, timestamps and damage of the video at `path` (see the module
  docstring); FootageError for a file that is no video."""
  container, stream = _open(path)
  damaged_from, damage, count, pts, spans = None, "", 0, [], []
  with container:
    width, height = stream.codec_context.width, stream.codec_context.height
    declared = int(stream.frames or 0)
    try:
      for packet in container.demux():
        if packet.size == 0:  # a demuxer's end-of-stream marker
          continue
        video = packet.stream.index == stream.index
        count += video
        if packet.pos is not None and packet.pos >= 0:  # where each packet lies in the file
          spans.append((int(packet.pos), int(packet.size), count if video else None))
        if not video:
          continue
        if packet.is_corrupt and damaged_from is None:
          damaged_from, damage = count, f"the container flags frame {count} corrupt"
        if packet.pts is not None:
          pts.append(int(packet.pts))
    except Exception as e:  # damaged data the demuxer cannot read past
      if damaged_from is None:
        damaged_from, damage = count + 1, f"unreadable after frame {count} ({type(e).__name__})"
  pts_step = first_pts = None
  if count and len(pts) == count:
    pts = np.sort(np.array(pts, np.int64))
    steps = np.diff(pts)
    values, counts = np.unique(steps, return_counts=True) if len(steps) else ([], [])
    if len(steps) and values[np.argmax(counts)] > 0:
      step = int(values[np.argmax(counts)])
      if np.mean(steps == step) >= REGULAR_SHARE:
        pts_step, first_pts = step, int(pts[0])
        gaps = np.flatnonzero(steps > 1.5 * step)
        if len(gaps) and (damaged_from is None or gaps[0] + 2 < damaged_from):
          missing = int(round(steps[gaps[0]] / step)) - 1
          damaged_from = int(gaps[0]) + 2
          damage = f"{missing} frames missing after frame {damaged_from - 1} (timestamps)"
  probe = VideoProbe(
    path, width, height, count, declared, pts_step, first_pts, damaged_from, damage
  )
  if declared > count and damaged_from is None:
    # Frames lost without a trace in the timestamps: the bytes the demuxer skipped, and the first
    # frame the decoder flags, say where; where neither does, no frame number can be trusted.
    located = [
      where for where in (_after_skipped_bytes(spans), _first_damaged_frame(probe)) if where
    ]
    frame, why = min(located) if located else (1, "the damage cannot be located")
    probe = dataclasses.replace(
      probe, damaged_from=frame, damage=f"it declares {declared} frames but holds {count}; {why}"
    )
  return probe


def _after_skipped_bytes(spans: list[tuple[int, int, int | None]]) -> tuple[int, str] | None:
  """The first video frame after the widest stretch of bytes between two packets, when it is far
  wider than the others (the demuxer skipped unreadable data there)."""
  spans = sorted(spans)
  gaps = [(b[0] - a[0] - a[1], i + 1) for i, (a, b) in enumerate(zip(spans, spans[1:]))]
  if not gaps:
    return None
  widest, after = max(gaps)
  if widest <= max(4096, 16 * float(np.median([g for g, _ in gaps]))):
    return None
  frame = next((v for _, _, v in spans[after:] if v is not None), None)
  return (frame, f"{widest} unreadable bytes before frame {frame}") if frame else None


def _first_damaged_frame(probe: VideoProbe) -> tuple[int, str] | None:
  try:
    for _ in decoded_frames(probe, probe.frames, rgb=False):
      pass
  except VideoDamaged as e:
    return e.frame, e.reason
  return None


def _check(probe: VideoProbe, number: int, frame) -> str:
  """Why decoded frame `number` is not where it should be ("" when it is)."""
  if frame.is_corrupt:
    return f"the decoder flags frame {number} corrupt"
  if probe.pts_step is not None:
    if frame.pts is None:
      return f"frame {number} has no timestamp"
    place = round((int(frame.pts) - probe.first_pts) / probe.pts_step) + 1
    if place != number:
      return f"decoded frame {number} has the timestamp of frame {place}"
  return ""


def decoded_frames(
  probe: VideoProbe, last: int, *, rgb: bool = True, wanted=None
) -> Iterator[tuple]:
  """`(number, frame)` for frames 1..`last` of the video in presentation order (uint8 RGB
  `[H, W, 3]` arrays, or PyAV frames with `rgb=False`), decoded with PyAV's threads; with
  `wanted` (frame numbers), only those are yielded (every frame is still decoded and checked).

  Raises:
    VideoDamaged: at the first frame up to `last` that is not where it should be.
    FootageError: the video holds fewer than `last` frames.
  """
  if probe.damaged_from is not None and probe.damaged_from <= last:
    raise VideoDamaged(probe.path, probe.damaged_from, probe.damage)
  container, stream = _open(probe.path)
  stream.thread_type = "AUTO"
  number = 0
  with container:
    packets = container.demux(stream)
    while number < last:
      try:
        packet = next(packets, None)
        frames = packet.decode() if packet is not None else []
      except Exception as e:  # PyAV raises many types for damaged streams
        raise VideoDamaged(
          probe.path, number + 1, f"the decoder failed: {type(e).__name__}"
        ) from None
      if packet is None and not frames:
        break
      for frame in frames:
        number += 1
        if why := _check(probe, number, frame):
          raise VideoDamaged(probe.path, number, why)
        if wanted is None or number in wanted:
          yield number, frame.to_ndarray(format="rgb24") if rgb else frame
        if number == last:
          return
  if number < last:
    raise FootageError(
      f"{probe.path} has {number} frames, but its track file has boxes up to frame {last}"
    )
