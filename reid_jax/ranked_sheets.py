"""Ranked sheets: a query tracklet above its nearest gallery tracklets, one row each.

The one renderer of the evaluation report (`ranked_q<row>.png`: green when the gallery tracklet
is the query's person, red when not) and of `search` (`sheet_<n>.png`: green under the
threshold, red over it, grey without a threshold). Each row is a line of text (who, which camera,
the distance) over up to FRAMES_SHOWN frames spread evenly over the tracklet, each resized to
CELL pixels, framed in the row's colour. PNG files, written whole or not at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_prep.files import atomic_write

FRAMES_SHOWN = 8
CELL = (64, 128)  # width, height of one frame
BORDER = 4  # pixels of colour around a row's frames
TEXT = 14  # pixels of text above a row's frames
GAP = 6  # pixels between rows
# The verdict on a row: True (the same person / a match), False (not), None (no verdict, the query).
COLOURS = {True: (0, 160, 0), False: (210, 0, 0), None: (128, 128, 128)}


@dataclasses.dataclass(frozen=True)
class Row:
  """One tracklet of a sheet: its `frames` (n >= 1 uint8 `[h, w, 3]` images, of any sizes), one
  line of `text`, and the `verdict` that colours it (see COLOURS)."""

  frames: Sequence[np.ndarray]
  text: str
  verdict: bool | None = None


def shown_frames(frames: Sequence[np.ndarray], count: int = FRAMES_SHOWN) -> list[np.ndarray]:
  """Up to `count` frames spread evenly over the tracklet, first and last included."""
  picked = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
  return [frames[i] for i in picked]


def cell(frame: np.ndarray) -> np.ndarray:
  """One frame as it appears on a sheet: resized (bilinear) to CELL."""
  return np.asarray(Image.fromarray(np.asarray(frame, np.uint8)).resize(CELL, Image.BILINEAR))


def frame_origin(row: int, column: int) -> tuple[int, int]:
  """(x, y) of the top-left pixel of frame `column` of row `row` on a sheet."""
  return BORDER + column * CELL[0], row * (TEXT + CELL[1] + 2 * BORDER + GAP) + TEXT + BORDER


def render(rows: list[Row]) -> Image.Image:
  """The sheet of `rows` (the query first) as an RGB image."""
  width = FRAMES_SHOWN * CELL[0] + 2 * BORDER
  height = len(rows) * (TEXT + CELL[1] + 2 * BORDER + GAP) - GAP
  sheet = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(sheet)
  for r, row in enumerate(rows):
    frames = shown_frames(row.frames)
    x, y = frame_origin(r, 0)
    draw.text((2, y - BORDER - TEXT + 1), row.text, fill=(0, 0, 0))
    draw.rectangle(
      [x - BORDER, y - BORDER, x + len(frames) * CELL[0] + BORDER - 1, y + CELL[1] + BORDER - 1],
      fill=COLOURS[row.verdict],
    )
    for c, frame in enumerate(frames):
      sheet.paste(Image.fromarray(cell(frame)), frame_origin(r, c))
  return sheet


def write(path: str, rows: list[Row]) -> str:
  """Renders `rows` to the PNG file `path`; returns `path`."""
  with atomic_write(path, "wb") as f:
    render(rows).save(f, format="PNG")
  return path
