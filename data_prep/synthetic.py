r"""Synthetic video re-id data in the exact MARS on-disk layout.

    python -m data_prep.synthetic --out=/tmp/synthetic_mars [--identities=48 --seed=0]
    python -m data_prep.build --dataset=mars --manual_dir=/tmp/synthetic_mars --data_dir=/tmp/data

The output is a folder a real MARS download could be swapped for: JPEGs in
`bbox_train/<pid4>/` and `bbox_test/<pid4>/` (junk in `00-1`, distractors in `0000`),
`info/train_name.txt`, `info/test_name.txt`, and `info/tracks_train_info.mat`,
`info/tracks_test_info.mat`, `info/query_IDX.mat` with MARS's keys and row format
`[start, end, pid, camid]` (1-based, inclusive). So the real MARS converter is what reads it and the
whole path from a user's download to a trained model is exercised without the 6 GB download.

Why the images look the way they do: the default size feeds a demo that trains a tiny network on a
2-core CPU in minutes, so identities must be learnable from a few thousand low-resolution frames,
yet nearest-neighbour matching on raw pixels must not solve it:
- identity: shirt colour and pattern, trouser colour, skin, hair and shoe colour, body height and
    width and an optional bag; within the train set and within the test set no two people share
    the (shirt, trouser) colour pair (up to 144 people per set) or the whole combination;
- camera: a per-channel colour cast and brightness, its own background, and a viewpoint (person
    scale, vertical placement, a narrower side view, back views hiding the bag);
- frame: walking motion (leg and arm swing, bobbing), detector misalignment (shift and scale
    jitter), occasional occluders entering from a side, sensor noise and JPEG compression.
Everything is drawn from `numpy.random.default_rng` streams keyed by `--seed`, so the same seed
gives byte-identical JPEGs and name lists (the .mat headers carry a creation time).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data_prep.errors import FieldError, UserError, require

# Well-separated clothing colours (RGB): a small network must tell every pair apart.
_PALETTE = np.array(
  [
    (200, 30, 30),
    (30, 150, 40),
    (30, 60, 190),
    (230, 200, 40),
    (240, 130, 20),
    (140, 40, 170),
    (20, 180, 190),
    (235, 235, 235),
    (30, 30, 30),
    (150, 90, 50),
    (240, 120, 170),
    (120, 130, 140),
  ],
  dtype=np.float32,
)
_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "split", "band")
_SKIN = np.array([(240, 200, 170), (200, 150, 110), (150, 100, 70), (90, 60, 40)], np.float32)


@dataclasses.dataclass(frozen=True)
class Person:
  """Appearance of one identity (independent of camera and frame)."""

  shirt: np.ndarray
  shirt2: np.ndarray
  pattern: str
  trousers: np.ndarray
  shoes: np.ndarray
  skin: np.ndarray
  hair: np.ndarray
  height: float  # fraction of the image height
  width: float  # torso width as a fraction of the image width
  bag: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Camera:
  """What one camera does to every person it films."""

  gain: np.ndarray  # per-channel colour cast
  offset: float
  background: np.ndarray  # [H, W, 3] float32
  scale: float
  y_shift: float
  side_view: bool  # torso seen narrower
  back_view: bool  # the bag is hidden
  noise: np.ndarray  # [N, H, W, 3] sensor noise fields; drawing fresh noise per frame is slow


def _distinct_combos(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
  """n (shirt colour, pattern, trouser colour) index triples for one set of people.

  Within a set (train, test) no two people share the shirt and trouser colour pair while there
  are pairs left (144), and no two share all three: at the demo's low resolution patterns are
  a weak cue, so colours carry identity; camera casts keep it from being trivial.
  """
  pairs = list(itertools.product(range(len(_PALETTE)), repeat=2))
  order = rng.permutation(len(pairs))
  base_pattern = rng.integers(len(_PATTERNS), size=len(pairs))
  combos = []
  for i in range(n):
    pair = order[i % len(pairs)]
    pattern = (base_pattern[pair] + i // len(pairs)) % len(_PATTERNS)
    combos.append((pairs[pair][0], int(pattern), pairs[pair][1]))
  return combos


def _person(rng: np.random.Generator, combo: tuple[int, int, int]) -> Person:
  shirt_idx, pattern_idx, trousers_idx = combo
  others = [i for i in range(len(_PALETTE)) if i != shirt_idx]
  jitter = lambda c: np.clip(c + rng.normal(0, 12, 3), 0, 255).astype(np.float32)
  return Person(
    shirt=jitter(_PALETTE[shirt_idx]),
    shirt2=jitter(_PALETTE[rng.choice(others)]),
    pattern=_PATTERNS[pattern_idx],
    trousers=jitter(_PALETTE[trousers_idx]),
    shoes=jitter(_PALETTE[rng.integers(len(_PALETTE))] * 0.5),
    skin=jitter(_SKIN[rng.integers(len(_SKIN))]),
    hair=jitter(np.array([rng.uniform(10, 120)] * 3) * np.array([1.0, 0.8, 0.6])),
    height=float(rng.uniform(0.78, 0.95)),
    width=float(rng.uniform(0.32, 0.46)),
    bag=jitter(_PALETTE[rng.integers(len(_PALETTE))]) if rng.random() < 0.4 else None,
  )


def _camera(rng: np.random.Generator, height: int, width: int) -> Camera:
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  base = rng.uniform(60, 200, 3).astype(np.float32)
  tilt = rng.uniform(-40, 40, 3).astype(np.float32)
  # A floor/wall split plus a gradient: a static scene the network must learn to ignore.
  floor = (yy > height * rng.uniform(0.55, 0.8))[..., None]
  background = base + tilt * (xx / width)[..., None] - 30.0 * floor
  background += rng.normal(0, 6, (height, width, 3)).astype(np.float32)
  return Camera(
    gain=rng.uniform(0.75, 1.25, 3).astype(np.float32),
    offset=float(rng.uniform(-20, 20)),
    background=background,
    scale=float(rng.uniform(0.85, 1.05)),
    y_shift=float(rng.uniform(-0.04, 0.04)),
    side_view=bool(rng.random() < 0.35),
    back_view=bool(rng.random() < 0.35),
    noise=5 * rng.standard_normal((16, height, width, 3), dtype=np.float32),
  )


def _paint(img: np.ndarray, y0: float, y1: float, x0: float, x1: float, colour) -> None:
  """Fills the pixel rectangle [y0, y1) x [x0, x1), clipped to the image."""
  height, width = img.shape[:2]
  ys, ye = max(int(round(y0)), 0), min(int(round(y1)), height)
  xs, xe = max(int(round(x0)), 0), min(int(round(x1)), width)
  if ys < ye and xs < xe:
    img[ys:ye, xs:xe] = colour


def _render(
  person: Person,
  camera: Camera,
  rng: np.random.Generator,
  phase: float,
  occluder: tuple[bool, float, np.ndarray] | None,
  shift: tuple[float, float, float],
) -> np.ndarray:
  """One frame [H, W, 3] uint8 of `person` seen by `camera` at walking `phase`."""
  height, width = camera.background.shape[:2]
  img = camera.background.copy()
  dx, dy, dscale = shift
  scale = camera.scale * dscale
  body_h = person.height * height * scale
  top = height * (0.5 + camera.y_shift + dy) - body_h / 2 + np.sin(2 * phase) * height * 0.01
  cx = width * (0.5 + dx)
  torso_w = person.width * width * scale * (0.75 if camera.side_view else 1.0)
  at = lambda fraction: top + fraction * body_h  # body height fraction -> image row

  swing = np.sin(phase) * torso_w * 0.18
  leg_w = torso_w * 0.42
  for side in (-1, 1):
    x0 = cx + side * (torso_w * 0.24 + swing) - leg_w / 2
    _paint(img, at(0.52), at(0.94), x0, x0 + leg_w, person.trousers)
    _paint(img, at(0.94), at(1.0), x0 - 1, x0 + leg_w + 1, person.shoes)
  arm_w = torso_w * 0.2
  for side in (-1, 1):
    x0 = cx + side * (torso_w / 2 + arm_w / 2) - arm_w / 2
    _paint(
      img, at(0.18) - side * swing * 0.3, at(0.5) - side * swing * 0.3, x0, x0 + arm_w, person.shirt
    )
  # The torso with its pattern: pattern coordinates are relative to the body, so the pattern
  # moves and scales with the person rather than staying fixed in the image.
  ys, ye = max(int(round(at(0.17))), 0), min(int(round(at(0.54))), height)
  xs, xe = max(int(round(cx - torso_w / 2)), 0), min(int(round(cx + torso_w / 2)), width)
  if ys < ye and xs < xe:
    ty = ((np.arange(ys, ye) - top) / body_h)[:, None]
    tx = ((np.arange(xs, xe) - cx) / max(torso_w, 1.0))[None, :]
    second = {
      "solid": np.zeros((1, 1), bool),
      "hstripes": (ty * 14) % 2 < 1,
      "vstripes": (tx * 3 + 10) % 2 < 1,
      "checks": ((ty * 10).astype(int) + (tx * 3 + 10).astype(int)) % 2 == 0,
      "split": tx < 0,
      "band": (ty > 0.28) & (ty < 0.4),
    }[person.pattern]
    second = np.broadcast_to(second, (ye - ys, xe - xs))[..., None]
    img[ys:ye, xs:xe] = np.where(second, person.shirt2, person.shirt)
  head_r = torso_w * 0.32
  head_cy = at(0.09)
  ys, ye = max(int(head_cy - 1.3 * head_r), 0), min(int(head_cy + 1.3 * head_r) + 1, height)
  xs, xe = max(int(cx - head_r), 0), min(int(cx + head_r) + 1, width)
  if ys < ye and xs < xe:
    hy = np.arange(ys, ye)[:, None]
    hx = np.arange(xs, xe)[None, :]
    head = ((hx - cx) / head_r) ** 2 + ((hy - head_cy) / (head_r * 1.25)) ** 2 < 1
    colour = np.where((hy < head_cy - head_r * 0.35)[..., None], person.hair, person.skin)
    img[ys:ye, xs:xe] = np.where(head[..., None], colour, img[ys:ye, xs:xe])
  if person.bag is not None and not camera.back_view:
    bx = cx + torso_w * 0.45
    _paint(img, at(0.3), at(0.5), bx, bx + torso_w * 0.35, person.bag)
  if occluder is not None:
    from_left, extent, colour = occluder
    x0, x1 = (0, extent * width) if from_left else ((1 - extent) * width, width)
    _paint(img, height * 0.35, height, x0, x1, colour)
  img *= camera.gain
  img += camera.offset
  img += camera.noise[rng.integers(len(camera.noise))]
  return np.clip(img, 0, 255).astype(np.uint8)


def _tracklet_frames(
  person: Person, camera: Camera, rng: np.random.Generator, length: int
) -> list[np.ndarray]:
  phase0 = rng.uniform(0, 2 * np.pi)
  speed = rng.uniform(0.35, 0.7)
  drift = rng.normal(0, 0.004)
  occluder = None
  occluded = np.zeros(length, bool)
  if rng.random() < 0.3:  # an occluder passes during part of the tracklet
    start = rng.integers(length)
    occluded[start : start + rng.integers(3, 10)] = True
    occluder = (
      bool(rng.random() < 0.5),
      float(rng.uniform(0.2, 0.45)),
      rng.uniform(0, 255, 3).astype(np.float32),
    )
  frames = []
  for i in range(length):
    shift = (drift * i + rng.normal(0, 0.045), rng.normal(0, 0.03), rng.uniform(0.94, 1.06))
    occluding = occluder if occluded[i] else None
    frames.append(_render(person, camera, rng, phase0 + speed * i, occluding, shift))
  return frames


def _junk_frames(camera: Camera, rng: np.random.Generator, length: int) -> list[np.ndarray]:
  """A bad detection: mostly background with a fragment of clothing."""
  height, width = camera.background.shape[:2]
  colour = rng.uniform(0, 255, 3).astype(np.float32)
  y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
  frames = []
  for _ in range(length):
    img = camera.background.copy()
    dy, dx = rng.integers(-3, 4, 2)
    _paint(img, y0 + dy, y0 + dy + height // 3, x0 + dx, x0 + dx + width // 3, colour)
    img = img * camera.gain + camera.offset + camera.noise[rng.integers(len(camera.noise))]
    frames.append(np.clip(img, 0, 255).astype(np.uint8))
  return frames


def check_settings(
  *,
  identities: int,
  cameras: int,
  min_len: int,
  max_len: int,
  distractors: int = 0,
  test_identities: int | None = None,
  **_,
) -> None:
  """Raises FieldError naming the `generate` argument of settings that cannot be drawn."""
  test_identities = test_identities or identities
  if cameras < 2 or cameras > 9:
    raise FieldError("cameras", f"must be in 2..9 (MARS names hold one digit), got {cameras}")
  if min_len < 1 or max_len < min_len or max_len > 999:
    raise FieldError("min_len", f"need 1 <= min_len <= max_len <= 999, got {min_len}, {max_len}")
  most = len(_PALETTE) ** 2 * len(_PATTERNS)
  if max(identities, test_identities, distractors) > most or identities + test_identities > 9999:
    raise FieldError(
      "identities", f"at most {most} distinct people per set and 9999 in all can be drawn"
    )


def generate(
  out: str,
  *,
  identities: int = 48,
  test_identities: int | None = None,
  cameras: int = 4,
  tracklets_per_camera: int = 2,
  min_len: int = 16,
  max_len: int = 32,
  height: int = 128,
  width: int = 64,
  junk: int = 8,
  distractors: int = 8,
  seed: int = 0,
  jpeg_quality: int = 90,
) -> dict[str, int]:
  """Writes a synthetic MARS-layout dataset under `out`; returns counts of what was written.

  Args:
      out: folder to create (must not already hold a dataset).
      identities: training identities.
      test_identities: test identities (None or 0: as many as `identities`).
      cameras: number of cameras (>= 2); each identity appears in 2..`cameras` of them.
      tracklets_per_camera: at most this many tracklets per identity and camera.
      min_len, max_len: tracklet length range in frames.
      height, width: image size in pixels.
      junk, distractors: test tracklets with pid -1 (`00-1`) and pid 0 (`0000`).
      seed: everything is a deterministic function of it.
      jpeg_quality: JPEG quality of the written frames.
  """
  test_identities = test_identities or identities
  check_settings(
    identities=identities,
    test_identities=test_identities,
    cameras=cameras,
    min_len=min_len,
    max_len=max_len,
    distractors=distractors,
  )
  import scipy.io

  if os.path.exists(os.path.join(out, "info", "tracks_test_info.mat")):
    raise FileExistsError(f"{out} already holds a dataset; choose another --out")

  rng = np.random.default_rng(seed)
  cams = [_camera(rng, height, width) for _ in range(cameras)]
  people = [
    _person(rng, combo)
    for n in (identities, test_identities, distractors)
    for combo in _distinct_combos(rng, n)
  ]
  pids = np.sort(rng.choice(np.arange(1, 10000), identities + test_identities, replace=False))
  pids = rng.permutation(pids)
  train_pids = np.sort(pids[:identities])
  test_pids = np.sort(pids[identities:])

  # Frames are rendered while writing, each tracklet from its own stream keyed by (seed, k), so
  # memory stays at one tracklet whatever the dataset size.
  render_keys = itertools.count()

  def render(draw, *args):
    return functools.partial(draw, *args, np.random.default_rng([seed, next(render_keys)]))

  def tracks_for(pid_people):
    """(pid, camera, tracklet number, length, render) for people seen by 2+ cameras."""
    for pid, person in pid_people:
      n_cams = rng.integers(2, cameras + 1)
      for cam in np.sort(rng.choice(cameras, n_cams, replace=False)):
        for t in range(rng.integers(1, tracklets_per_camera + 1)):
          length = int(rng.integers(min_len, max_len + 1))
          yield pid, cam + 1, t + 1, length, render(_tracklet_frames, person, cams[cam])

  train = list(tracks_for(zip(train_pids, people[:identities])))
  test = []
  for k in range(junk):
    cam = int(rng.integers(cameras))
    length = int(rng.integers(min_len, max_len + 1))
    test.append((-1, cam + 1, k + 1, length, render(_junk_frames, cams[cam])))
  for k, person in enumerate(people[identities + test_identities :]):
    cam = int(rng.integers(cameras))
    length = int(rng.integers(min_len, max_len + 1))
    test.append((0, cam + 1, k + 1, length, render(_tracklet_frames, person, cams[cam])))
  test += list(tracks_for(zip(test_pids, people[identities : identities + test_identities])))

  os.makedirs(os.path.join(out, "info"), exist_ok=True)
  train_info = _write_split(out, "bbox_train", "train_name.txt", train, jpeg_quality)
  test_info = _write_split(out, "bbox_test", "test_name.txt", test, jpeg_quality)
  # MARS's queries: per test identity and camera, one tracklet; gallery = all test tracklets.
  queries, seen = [], set()
  for row, (_, _, pid, cam) in enumerate(test_info):
    if pid > 0 and (pid, cam) not in seen:
      seen.add((pid, cam))
      queries.append(row + 1)
  info = os.path.join(out, "info")
  scipy.io.savemat(
    os.path.join(info, "tracks_train_info.mat"),
    {"track_train_info": np.asarray(train_info, np.float64)},
  )
  scipy.io.savemat(
    os.path.join(info, "query_IDX.mat"), {"query_IDX": np.asarray(queries, np.float64)[None]}
  )
  # Written last: its presence marks a complete dataset (see the check above).
  scipy.io.savemat(
    os.path.join(info, "tracks_test_info.mat"),
    {"track_test_info": np.asarray(test_info, np.float64)},
  )
  return dict(
    train_tracklets=len(train),
    test_tracklets=len(test),
    queries=len(queries),
    frames=sum(t[3] for t in train + test),
  )


def _mars_pid(pid: int) -> str:
  return "00-1" if pid == -1 else f"{pid:04d}"


def _write_split(out, folder, list_name, tracks, jpeg_quality) -> list[list[int]]:
  """Writes the JPEGs and name list; returns MARS track-info rows [start, end, pid, camid]."""
  names, rows = [], []
  # MARS lists tracklets in name order: junk '00-1' sorts before distractors '0000'.
  for pid, cam, num, length, render in sorted(tracks, key=lambda t: (_mars_pid(t[0]), t[1], t[2])):
    folder_path = os.path.join(out, folder, _mars_pid(pid))
    os.makedirs(folder_path, exist_ok=True)
    start = len(names) + 1
    for f, frame in enumerate(render(length)):
      name = f"{_mars_pid(pid)}C{cam}T{num:04d}F{f + 1:03d}.jpg"
      Image.fromarray(frame).save(os.path.join(folder_path, name), quality=jpeg_quality)
      names.append(name)
    rows.append([start, len(names), pid, cam])
  with open(os.path.join(out, "info", list_name), "w") as f:
    f.write("\n".join(names) + "\n")
  return rows


def generate_footage(
  out: str,
  *,
  videos: int = 2,
  people: int = 4,
  frames: int = 60,
  height: int = 180,
  width: int = 320,
  seed: int = 0,
) -> dict[str, int]:
  """Writes short camera videos of people walking through, with their MOTChallenge track files.

  `<out>/camera<k>.mp4` (H.264, 10 fps) shows every one of `people` new identities (not in the
  synthetic dataset) crossing the scene once, entering and leaving over the frame's edges;
  `<out>/camera<k>.txt` holds their boxes (`frame,id,left,top,width,height,1,-1,-1,-1`, track
  ids differing between videos) and `<out>/identities.json` maps each `camera<k>:<id>` to its
  person: the ground truth of which tracks are the same person.
  """
  import json

  av = require("av", "video", f"writing the videos of {out}")

  if os.path.exists(os.path.join(out, "identities.json")):
    raise FileExistsError(f"{out} already holds footage; choose another folder")
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng([seed, 7919])
  crop_h, crop_w = 128, 64
  persons = [_person(rng, combo) for combo in _distinct_combos(rng, people)]
  identities = {}
  for v in range(videos):
    stem = f"camera{v + 1}"
    camera = _camera(rng, crop_h, crop_w)  # how this camera films a person
    scene = _camera(rng, height, width).background * camera.gain + camera.offset
    walks = []
    for n, track in enumerate(rng.permutation(people) + 1):
      length = int(rng.integers(frames // 3, frames // 2))
      start = int(rng.integers(0, frames - length))
      rightwards = bool(rng.random() < 0.5)
      x0, x1 = (-crop_w // 2, width - crop_w // 2)[:: 1 if rightwards else -1]
      top = int(rng.integers(0, height - crop_h + 1))
      walks.append((int(track), persons[n], start, length, x0, x1, top, rng.uniform(0, 6.3)))
      identities[f"{stem}:{track}"] = n
    lines = []
    with av.open(os.path.join(out, f"{stem}.mp4"), "w") as container:
      stream = container.add_stream("libx264", rate=10)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      for f in range(frames):
        image = np.clip(scene + rng.normal(0, 3, scene.shape), 0, 255).astype(np.uint8)
        for track, person, start, length, x0, x1, top, phase in walks:
          if not start <= f < start + length:
            continue
          left = int(round(x0 + (x1 - x0) * (f - start) / max(length - 1, 1)))
          body = _render(person, camera, rng, phase + 0.5 * (f - start), None, (0.0, 0.0, 1.0))
          ys, xs = slice(top, top + crop_h), slice(max(left, 0), min(left + crop_w, width))
          image[ys, xs] = body[:, xs.start - left : xs.stop - left]
          lines.append(f"{f + 1},{track},{left},{top},{crop_w},{crop_h},1,-1,-1,-1")
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)
    with open(os.path.join(out, f"{stem}.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
  with open(os.path.join(out, "identities.json"), "w") as f:
    json.dump(identities, f, indent=1)
  return dict(videos=videos, tracks=len(identities), frames=frames * videos)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="folder to write the MARS-layout dataset to")
  parser.add_argument(
    "--footage", help="instead: a folder to write camera videos and their track files to"
  )
  parser.add_argument("--identities", type=int, default=48, help="training identities")
  parser.add_argument(
    "--test_identities", type=int, default=None, help="test identities (default: --identities)"
  )
  parser.add_argument("--cameras", type=int, default=4)
  parser.add_argument("--tracklets_per_camera", type=int, default=2)
  parser.add_argument("--min_len", type=int, default=16)
  parser.add_argument("--max_len", type=int, default=32)
  parser.add_argument("--height", type=int, default=128)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--junk", type=int, default=8, help="junk test tracklets (pid -1)")
  parser.add_argument("--distractors", type=int, default=8, help="distractor tracklets (pid 0)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--jpeg_quality", type=int, default=90)
  args = vars(parser.parse_args(argv))
  footage, out = args.pop("footage"), args.pop("out")
  if bool(footage) == bool(out):
    parser.error("give one of --out (a dataset) and --footage (videos)")
  try:
    counts = generate_footage(footage, seed=args["seed"]) if footage else generate(out, **args)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None
  print(" ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
  main()
