"""Videos, track files and frame files as cameras and trackers leave them, for the footage tests:
videos written with PyAV's encoders, frames with PIL, and damaged as disks and transfers damage
them."""

import os

import av
import numpy as np
from PIL import Image


def write_video(path, frames, codec="ffv1", fmt=None):
  """A video of RGB `frames` (lossless FFV1 by default)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


def write_lines(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def save_frame(path, image=None, fmt=None):
  """A frame file of `image` (default a black 8x4 frame), in PIL's `fmt` (default: by its name)."""
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  image = np.zeros((8, 4, 3), np.uint8) if image is None else image
  Image.fromarray(image).save(path, format=fmt)


def scene_video(path, codec="mpeg4", fmt=None, frames=90, size=(120, 160)):
  """A video of people-sized moving blocks on a noisy background, keyframes every 12 frames, and
  its track file: track 1 in frames 1-20, track 2 in 25-70, track 3 in 75-90 (those of them the
  video's `frames` hold)."""
  rng = np.random.default_rng(1)
  background = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
  images = []
  for f in range(1, frames + 1):
    image = np.roll(background, 2 * f, axis=1).copy()
    image[20:60, 10 + f % 50 : 30 + f % 50] = (40 * (f % 6), 200, 255 - 2 * f % 256)
    images.append(image)
  write_video(path, images, codec=codec, fmt=fmt)
  spans = ((1, 1, 20), (2, 25, 70), (3, 75, frames))
  rows = [
    f"{f},{track},{10 + f % 50},20,20,40"
    for track, first, last in spans
    for f in range(first, min(last, frames) + 1)
  ]
  write_lines(path.with_suffix(".txt"), rows)
  return str(path)


def damage(path, start=0.6, size=0.05):
  """Zeroes `size` of the file's bytes from `start` (fractions of its length)."""
  data = bytearray(open(path, "rb").read())
  at, count = int(len(data) * start), int(len(data) * size)
  data[at : at + count] = bytes(count)
  open(path, "wb").write(bytes(data))
