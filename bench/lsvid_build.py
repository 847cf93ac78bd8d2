r"""LS-VID conversion: build time and peak memory against the number of frames.

    python bench/lsvid_build.py --frames 20000 40000 80000

For each size, a synthetic download in the LS-VID layout (`data_prep.datasets.lsvid`: list files,
`tracklet_{train,test}/<pid4>/` folders of 128x64 JPEGs with noise, so they compress about as real
crops do, tracklets of 150-250 frames over 15 cameras, half the tracklets train and half test,
`info_test.mat` as HDF5) is written under `--workdir`, then in a fresh subprocess each
- the layout check alone (`data_prep.build.check_layout`: the reader's pass over every list line
  and folder, without TensorFlow), and
- the whole build (`data_prep.build.build`: layout check, TFDS shards, index, stats),
and reports the seconds and the subprocess's peak resident memory (VmHWM of /proc/self/status,
the high-water mark of the subprocess's own memory; `ru_maxrss` where /proc is absent). A memory
that does not grow with the frames shows as equal peaks across sizes. Each size's files are
deleted after it unless `--keep`.

TFDS keeps a split in memory up to 1 GB before it spills to its on-disk buckets, so below that
the build's peak grows with the split, up to that bound. `--write_buffer_mib=64` lowers the bound
in the benchmark's subprocesses, so that these small sizes take the path a full LS-VID split
takes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_HEIGHT, _WIDTH = 128, 64
_CAMERAS = 15
_TRACKLETS_PER_PERSON = 3


def _images(count: int, seed: int) -> list[bytes]:
  """`count` distinct JPEGs: a random smooth gradient plus Gaussian noise."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:_HEIGHT, 0:_WIDTH]
  images = []
  for _ in range(count):
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.8, 0.8, (2, 3))
    image = base + y[..., None] * slope[0] + x[..., None] * slope[1]
    image = image + rng.normal(0, 12, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    images.append(buffer.getvalue())
  return images


def write_download(root: str, frames: int, frames_per_tracklet: int, seed: int = 0) -> int:
  """Writes a synthetic `<root>/LS-VID/` of exactly `frames` frames; returns its tracklets."""
  import h5py
  import numpy as np

  rng = np.random.default_rng(seed)
  lengths = []
  while sum(lengths) < frames:
    lengths.append(int(rng.integers(frames_per_tracklet * 3 // 4, frames_per_tracklet * 5 // 4)))
  lengths[-1] -= sum(lengths) - frames
  if lengths[-1] <= 0:
    lengths[-2] += lengths.pop()
  half = (len(lengths) + 1) // 2
  pool = _images(256, seed)
  base = os.path.join(root, "LS-VID")
  os.makedirs(os.path.join(base, "list_sequence"))
  for split, split_lengths in (("train", lengths[:half]), ("test", lengths[half:])):
    lines, rows, start = [], [], 1
    for j, length in enumerate(split_lengths):
      pid, tracklet_id, cam = j // _TRACKLETS_PER_PERSON, j + 1, j % _CAMERAS + 1
      prefix = f"{pid:04d}_{tracklet_id:04d}_{cam:02d}"
      folder = os.path.join(base, f"tracklet_{split}", f"{pid:04d}")
      os.makedirs(folder, exist_ok=True)
      first = int(rng.integers(0, 5000))
      for k in range(length):
        with open(os.path.join(folder, f"{prefix}_{first + k:08d}.jpg"), "wb") as f:
          f.write(pool[int(rng.integers(len(pool)))])
      lines.append(f"tracklet_{split}/{pid:04d}/{prefix}_ {pid}\n")
      rows.append([start, start + length - 1, pid, cam])
      start += length
    with open(os.path.join(base, "list_sequence", f"list_seq_{split}.txt"), "w") as f:
      f.writelines(lines)
  test_people = (len(lengths) - half + _TRACKLETS_PER_PERSON - 1) // _TRACKLETS_PER_PERSON
  query = rng.permutation(np.arange(test_people) * _TRACKLETS_PER_PERSON + 1)  # 1-based rows
  os.makedirs(os.path.join(base, "test", "data"))
  with h5py.File(os.path.join(base, "test", "data", "info_test.mat"), "w") as f:
    f.create_dataset("info_test", data=np.array(rows, np.float64).T)
    f.create_dataset("query", data=query.astype(np.float64)[None])
  return len(lengths)


def _peak_rss_mib() -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(mode: str, download: str, data_dir: str, write_buffer_mib: str) -> None:
  """Runs one step in this fresh process and prints its seconds and peak memory as JSON."""
  import contextlib

  from data_prep import build as build_lib
  from data_prep import datasets

  if int(write_buffer_mib):
    from tensorflow_datasets.core import shuffle

    shuffle.MAX_MEM_BUFFER_SIZE = int(write_buffer_mib) << 20

  start = time.perf_counter()
  if mode == "check":
    build_lib.check_layout(datasets.get("lsvid"), download)
  else:
    with contextlib.redirect_stdout(sys.stderr):  # the statistics table
      build_lib.build("lsvid", download, data_dir)
  seconds = time.perf_counter() - start
  print(json.dumps(dict(seconds=seconds, peak_rss_mib=_peak_rss_mib())))


def _run_child(mode: str, download: str, data_dir: str, write_buffer_mib: int) -> dict:
  process = subprocess.run(
    [
      sys.executable,
      os.path.abspath(__file__),
      "--child",
      mode,
      download,
      data_dir,
      str(write_buffer_mib),
    ],
    capture_output=True,  # TensorFlow's logs and TFDS's progress bars; shown on failure
    text=True,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
  )
  if process.returncode:
    sys.stderr.write(process.stderr)
    raise SystemExit(f"the {mode} subprocess failed (exit status {process.returncode})")
  return json.loads(process.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, nargs="+", default=[20000, 40000, 80000])
  parser.add_argument("--frames_per_tracklet", type=int, default=200)
  parser.add_argument("--workdir", default="/tmp/reid_jax_lsvid_bench")
  parser.add_argument("--keep", action="store_true", help="keep each size's download and build")
  parser.add_argument(
    "--write_buffer_mib", type=int, default=0, help="TFDS's in-memory write buffer (0: its 1 GB)"
  )
  parser.add_argument("--child", nargs=4, help="internal")
  args = parser.parse_args()
  if args.child:
    _child(*args.child)
    return

  if os.path.exists(args.workdir):
    raise SystemExit(f"{args.workdir} exists; remove it or pass another --workdir")
  results = []
  for frames in args.frames:
    root = os.path.join(args.workdir, str(frames))
    download, data_dir = os.path.join(root, "download"), os.path.join(root, "data")
    start = time.perf_counter()
    tracklets = write_download(download, frames, args.frames_per_tracklet)
    written = time.perf_counter() - start
    megabytes = sum(
      os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(download) for n in names
    ) / (1 << 20)
    print(
      f"{frames} frames, {tracklets} tracklets: download of {megabytes:.0f} MiB written in "
      f"{written:.0f} s",
      flush=True,
    )
    check = _run_child("check", download, data_dir, args.write_buffer_mib)
    build = _run_child("build", download, data_dir, args.write_buffer_mib)
    results.append((frames, tracklets, megabytes, check, build))
    print(
      f"  layout check {check['seconds']:.1f} s, {check['peak_rss_mib']:.0f} MiB; "
      f"build {build['seconds']:.1f} s, {build['peak_rss_mib']:.0f} MiB",
      flush=True,
    )
    if not args.keep:
      shutil.rmtree(root)
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)

  buffer = f"{args.write_buffer_mib} MiB" if args.write_buffer_mib else "1 GB (TFDS's)"
  print(
    f"\nLS-VID build, {os.cpu_count()} CPUs, frames {_HEIGHT}x{_WIDTH} JPEG, write buffer {buffer}"
  )
  header = (
    f"{'frames':>8} {'tracklets':>9} {'MiB':>6} {'check s':>8} {'check RSS':>10} "
    f"{'build s':>8} {'s/100k':>7} {'build RSS':>10}"
  )
  print(header)
  for frames, tracklets, megabytes, check, build in results:
    print(
      f"{frames:>8} {tracklets:>9} {megabytes:>6.0f} {check['seconds']:>8.1f} "
      f"{check['peak_rss_mib']:>7.0f} MiB {build['seconds']:>8.1f} "
      f"{build['seconds'] / frames * 1e5:>7.1f} {build['peak_rss_mib']:>7.0f} MiB"
    )


if __name__ == "__main__":
  main()
