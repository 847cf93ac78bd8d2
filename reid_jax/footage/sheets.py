"""Ranked sheets of a search: a query tracklet and its top k, one picture per tracklet (its middle
frame, from the original folder or video), with camera, distance and the threshold's decision."""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw

from reid_jax.footage.sources import Track, crop, discover

_CELL = (64, 128)  # width, height of a picture
_TEXT = 30  # pixels of text under a picture
_GREEN, _RED, _GREY = (0, 150, 0), (200, 0, 0), (90, 90, 90)


def middle_frame(track: Track) -> np.ndarray:
  """The RGB crop of the tracklet's middle frame."""
  i = track.num_frames // 2
  if track.paths is not None:
    with Image.open(track.paths[i]) as image:
      return np.asarray(image.convert("RGB"))
  import av

  target = int(track.frame_numbers[i])
  with av.open(track.source) as container:
    for number, frame in enumerate(container.decode(video=0), start=1):
      if number == target:
        where = f"{track.source} frame {number} ({track.name})"
        return crop(frame.to_ndarray(format="rgb24"), track.boxes[i], where)
  raise ValueError(f"{track.source}: no frame {target}")


@functools.cache
def _tracks_of(source: str, track_file: str, skip_bad: bool) -> dict[str, Track]:
  tracks, _ = discover(source, tracks=track_file, skip_bad=skip_bad)
  return {t.name: t for t in tracks}


def tracks_for(meta: dict) -> dict[str, Track]:
  """The tracklets of an embeddings file, found again from the input it recorded."""
  return _tracks_of(meta["input"], meta.get("tracks", ""), bool(meta.get("skip_bad", False)))


def _cell(image: np.ndarray, lines: list[str], colour) -> Image.Image:
  cell = Image.new("RGB", (_CELL[0] + 8, _CELL[1] + _TEXT + 8), "white")
  cell.paste(Image.new("RGB", (_CELL[0] + 6, _CELL[1] + 6), colour), (1, 1))
  cell.paste(Image.fromarray(image).resize(_CELL, Image.BILINEAR), (4, 4))
  draw = ImageDraw.Draw(cell)
  for n, line in enumerate(lines):
    draw.text((2, _CELL[1] + 8 + 10 * n), line[:12], fill=(0, 0, 0))
  return cell


def write_sheet(path: str, query: tuple, results: list[tuple]) -> str:
  """`query` = (name, camera, image); `results` = (name, camera, distance, decision, image)."""
  name, camera, image = query
  cells = [_cell(image, [name, camera], _GREY)]
  for g_name, g_camera, distance, decision, g_image in results:
    colour = {"match": _GREEN, "no match": _RED}.get(decision, _GREY)
    cells.append(_cell(g_image, [g_name, f"{g_camera} {distance:.3g}"], colour))
  width = sum(c.width for c in cells) + 12
  sheet = Image.new("RGB", (width, cells[0].height), "white")
  x = 0
  for n, cell in enumerate(cells):
    sheet.paste(cell, (x, 0))
    x += cell.width + (12 if n == 0 else 0)  # a gap after the query
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  sheet.save(path)
  return path
