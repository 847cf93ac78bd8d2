r"""Builds a video re-id dataset from a user's download.

    python -m data_prep.build --dataset=mars --manual_dir=/data/MARS --data_dir=/data/reid

`--dataset` is a name of `data_prep.datasets` (`--help` lists them with what to download). The
result, `<data_dir>/<dataset>/` (the format is `data_prep.built`), holds
- a standard TFDS dataset (TFRecord shards, one example per tracklet; see `data_prep.builders`);
- `index/train.npz`, `index/eval.npz`: per tracklet its metadata and, per frame, the shard and byte
  range of its JPEG inside the shards. TFDS reads records sequentially, but the training sampler
  wants 8 frames of an arbitrary tracklet: with the byte ranges the input pipeline reads exactly
  those 8 JPEGs from memory-mapped shards, so a clip costs 8 small reads and 8 decodes whatever the
  tracklet's length (MARS tracklets reach 920 frames). `train` holds the tracklets training draws
  from, `eval` the evaluation set, each made of the TFDS splits of the dataset's `views`;
- `stats.json`: the dataset, its default protocol, and per split (`train`, `query`, `gallery` as
  that protocol forms them; with person splits, those of split 0) tracklets, identities, frames,
  cameras and min / mean / max tracklet length.

The layout is read and checked in full before anything is written, so a bad download fails in
seconds naming the file. The build streams: images are encoded one tracklet at a time and the
per-frame index columns go to disk as they are read, so memory does not grow with the frames.
It is atomic: everything is written under `<data_dir>/.<dataset>.incomplete-<host>-<pid>-*` and
renamed to `<data_dir>/<dataset>` only when complete, so a failed or interrupted build leaves
nothing that looks finished, and the next build removes what an interrupted one left on this
host. Re-running a finished build does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence

import numpy as np

from data_prep import built, datasets
from data_prep.dataset import Dataset, LayoutError
from data_prep.errors import UserError
from data_prep.files import file_sha256

_FRAME_DTYPES = {
  "frame_numbers": np.int64,
  "frame_shard": np.int32,
  "frame_offset": np.int64,
  "frame_length": np.int64,
}


class BuildInTheWay(UserError, FileExistsError):
  """The build's destination holds something that is not a finished build."""


def build(dataset: str, manual_dir: str, data_dir: str) -> str:
  """Builds `dataset` from `manual_dir` into `<data_dir>/<dataset>`; returns that path.

  A no-op (besides printing the statistics) when the dataset is already built.
  """
  spec = datasets.get(dataset)
  final_dir = built.dataset_dir(data_dir, dataset)
  if built.is_built(data_dir, dataset):
    with open(os.path.join(final_dir, built.FINISHED)) as f:
      print(f"{final_dir} is already built; nothing to do (delete it to rebuild).")
      print(built.format_stats(json.load(f)))
    return final_dir
  if os.path.exists(final_dir):
    raise BuildInTheWay(f"{final_dir} exists but holds no finished build; remove it first")
  start = time.perf_counter()
  # Fail on layout errors before TFDS starts (and before the slow TensorFlow import).
  tracklets_per_split = check_layout(spec, manual_dir)

  import tensorflow_datasets as tfds

  from data_prep import builders

  os.makedirs(data_dir, exist_ok=True)
  remove_debris(data_dir, dataset)
  staging = tempfile.mkdtemp(prefix=_staging_prefix(dataset), dir=data_dir)
  try:
    builder = builders.builder_class(dataset)(
      data_dir=staging, tracklets_per_split=tracklets_per_split
    )
    # TFDS prints "Downloading and preparing dataset Unknown size ..." naming the staging
    # folder; the table printed below says what was built, and where.
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
        download_dir=os.path.join(staging, "downloads"),
        download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir,
          compute_stats=tfds.download.ComputeStatsMode.SKIP,
        ),
      )
    staged = os.path.join(staging, dataset)
    version_dir = os.path.relpath(builder.data_dir, staged)
    os.makedirs(os.path.join(staged, "index"))
    for view in built.VIEWS:
      write_index(staged, version_dir, spec, view, staging)
    stats = dataset_stats(spec, *(_tracklet_columns(staged, view) for view in built.VIEWS))
    shards = sorted(
      os.path.relpath(os.path.join(d, n), staged)
      for d, _, names in os.walk(os.path.join(staged, version_dir))
      for n in names
      if ".tfrecord-" in n
    )
    with open(os.path.join(staged, built.SHARDS), "w") as f:
      records = {
        s: dict(
          bytes=os.path.getsize(os.path.join(staged, s)),
          sha256=file_sha256(os.path.join(staged, s)),
        )
        for s in shards
      }
      json.dump(records, f, indent=1)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(staged, built.FINISHED), "w") as f:
      json.dump(stats, f, indent=2)
    os.rename(staged, final_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  print(built.format_stats(stats))
  return final_dir


def _staging_prefix(dataset: str) -> str:
  """`.<dataset>.incomplete-<host>-<pid>-`: names the building process, so that a later build
  can tell an interrupted build's folder from a running one's."""
  return f".{dataset}.incomplete-{socket.gethostname()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def remove_debris(data_dir: str, dataset: str) -> None:
  """Removes the staging folders of this dataset's builds that were interrupted on this host
  (their process is gone); those of running builds or other hosts are left, and named."""
  prefix = f".{dataset}.incomplete-{socket.gethostname()}-"
  for name in sorted(os.listdir(data_dir)):
    if not name.startswith(f".{dataset}.incomplete-"):
      continue
    path = os.path.join(data_dir, name)
    pid = name[len(prefix) :].split("-")[0] if name.startswith(prefix) else ""
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)
      print(f"Removed {path}, left by an interrupted build.")
    else:
      print(f"Left {path}: a build running now, or on another host.")


def verify(dataset: str, data_dir: str) -> None:
  """Checks every shard of a finished build against the size and SHA-256 the build recorded.
  Raises ValueError naming each damaged shard and the first tracklet whose frame in it no longer
  decodes (or whose bytes are gone)."""
  from PIL import Image

  root = built.finished_dir(data_dir, dataset)
  records = built.shard_records(root)
  if records is None:
    raise built.OutdatedBuild(
      f"{root} was built by an earlier version, without checksums: rebuild it"
    )
  problems = []
  for shard, record in records.items():
    path = os.path.join(root, shard)
    if not os.path.exists(path):
      problems.append(f"{path} is missing")
      continue
    size = os.path.getsize(path)
    if size == record["bytes"] and file_sha256(path) == record["sha256"]:
      continue
    problem = f"{path}: " + (
      f"{size} bytes, the build wrote {record['bytes']}"
      if size != record["bytes"]
      else "its contents changed (SHA-256)"
    )
    with open(path, "rb") as f:
      data = f.read()
    for view in built.VIEWS:
      with np.load(built.index_path(root, view)) as index:
        shard_of = [str(s) for s in index["shards"]]
        if shard not in shard_of:
          continue
        frames = np.flatnonzero(index["frame_shard"] == shard_of.index(shard))
        for frame in frames:
          start, length = index["frame_offset"][frame], index["frame_length"][frame]
          jpeg = data[start : start + length]
          try:
            Image.open(io.BytesIO(jpeg)).load()
            if len(jpeg) == length:
              continue
          except Exception:
            pass
          row = int(np.searchsorted(index["frame_start"], frame, side="right") - 1)
          problem += (
            f"; the first frame that no longer decodes is frame {index['frame_numbers'][frame]} "
            f"of {view} tracklet {row} (pid {index['pids'][row]}, camera "
            f"{index['camids'][row]}, tracklet id {index['tracklet_ids'][row]})"
          )
          break
        else:
          continue
        break
    problems.append(problem)
  if problems:
    raise built.DamagedDataset("damaged dataset (rebuild it):\n" + "\n".join(problems))
  print(f"{root}: all {len(records)} shards match their checksums.")


def check_layout(spec: Dataset, manual_dir: str) -> dict[str, int]:
  """Reads the whole layout once (without decoding images); returns the tracklets per split."""
  if not os.path.isdir(manual_dir):
    raise LayoutError(f"missing folder: {manual_dir} (the manual download directory)")
  counts = dict.fromkeys(spec.splits, 0)
  for t in spec.read(manual_dir):
    if t.split not in counts:
      raise ValueError(f"{spec.name}: reader yielded split {t.split!r}, not one of {spec.splits}")
    counts[t.split] += 1
  if not sum(counts.values()):
    raise LayoutError(f"{manual_dir}: no tracklets found")
  return counts


def _tfrecords(path: str) -> Iterator[tuple[int, bytes]]:
  """(byte offset of the data, data) of each record of a TFRecord file.

  The format is: uint64 length, uint32 length CRC, data, uint32 data CRC (little endian).
  """
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,) = struct.unpack("<Q", header[:8])
      offset = f.tell()
      yield offset, f.read(length)
      f.seek(4, os.SEEK_CUR)


def write_index(root: str, version_dir: str, spec: Dataset, view: str, scratch: str) -> None:
  """Writes `index/<view>.npz` of the dataset staged at `root`, read back from its shards.

  Reading the written records (rather than trusting the writer) makes the index describe exactly
  what is on disk. Tracklets come split by split, each in its canonical `index` order. Per-frame
  columns are appended to files under `scratch` and saved from memory maps, so memory holds only
  the per-tracklet columns.
  """
  import tensorflow as tf

  tracklets = {key: [] for key in built.TRACKLET_KEYS if key != "frame_start"}
  num_frames = [0]
  columns = {key: open(os.path.join(scratch, f"{view}.{key}"), "wb") for key in _FRAME_DTYPES}
  shards = []
  try:
    for split in spec.views[view]:
      prefix = f"{spec.name}-{split}.tfrecord-"
      names = sorted(n for n in os.listdir(os.path.join(root, version_dir)) if n.startswith(prefix))
      expected = 0
      for name in names:
        shards.append(os.path.join(version_dir, name))
        for offset, record in _tfrecords(os.path.join(root, shards[-1])):
          feature = tf.train.Example.FromString(record).features.feature
          ints = lambda key: list(feature[key].int64_list.value)
          if ints("index")[0] != expected:
            raise RuntimeError(f"{shards[-1]}: records out of canonical order at {expected}")
          expected += 1
          for key, name_in_record in (
            ("pids", "pid"),
            ("camids", "camid"),
            ("tracklet_ids", "tracklet_id"),
            ("roles", "role"),
          ):
            tracklets[key].append(ints(name_in_record)[0])
          tracklets["person_split_role"].append(ints("person_split_role"))
          jpegs = feature["frames"].bytes_list.value
          offsets, cursor = [], 0
          for jpeg in jpegs:
            # A frame's JPEG bytes appear verbatim (after a length prefix) in the record.
            cursor = record.index(jpeg, cursor)
            offsets.append(offset + cursor)
            cursor += len(jpeg)
          values = {
            "frame_numbers": ints("frame_numbers"),
            "frame_shard": [len(shards) - 1] * len(jpegs),
            "frame_offset": offsets,
            "frame_length": [len(j) for j in jpegs],
          }
          for key, dtype in _FRAME_DTYPES.items():
            columns[key].write(np.asarray(values[key], dtype).tobytes())
          num_frames.append(len(jpegs))
  finally:
    for f in columns.values():
      f.close()
  index = {
    "pids": np.array(tracklets["pids"], np.int64),
    "camids": np.array(tracklets["camids"], np.int64),
    "tracklet_ids": np.array(tracklets["tracklet_ids"], np.int64),
    "roles": np.array(tracklets["roles"], np.int8),
    "person_split_role": np.array(tracklets["person_split_role"], np.int8).reshape(
      len(num_frames) - 1, spec.person_splits
    ),
    "frame_start": np.cumsum(num_frames),
    "shards": np.array(shards),
  }
  for key, dtype in _FRAME_DTYPES.items():
    path = os.path.join(scratch, f"{view}.{key}")
    size = os.path.getsize(path) // np.dtype(dtype).itemsize
    index[key] = np.memmap(path, dtype, "r") if size else np.zeros(0, dtype)
  np.savez(built.index_path(root, view), **index)  # memory maps are written in chunks


def _tracklet_columns(root: str, view: str) -> dict[str, np.ndarray]:
  with np.load(built.index_path(root, view)) as f:
    return {key: f[key] for key in built.TRACKLET_KEYS}


def _split_stats(pids: np.ndarray, camids: np.ndarray, lengths: np.ndarray, spec) -> dict:
  if len(pids) == 0:
    return dict.fromkeys(built.STATS_FIELDS, 0)
  people = pids[~np.isin(pids, spec.non_identity_pids)]
  return dict(
    tracklets=int(len(pids)),
    identities=int(len(np.unique(people))),
    frames=int(lengths.sum()),
    cameras=int(len(np.unique(camids))),
    min_len=int(lengths.min()),
    mean_len=round(float(lengths.mean()), 2),
    max_len=int(lengths.max()),
  )


def dataset_stats(spec: Dataset, train: dict, evaluation: dict) -> dict:
  """The statistics of `stats.json` from the per-tracklet columns of the train and eval index."""
  protocol = spec.default_protocol
  train_rows = np.ones(len(train["pids"]), bool)
  query_rows = evaluation["roles"] == built.ROLE_QUERY
  gallery_rows = evaluation["roles"] == built.ROLE_GALLERY
  if protocol.queries_in_gallery:
    gallery_rows |= query_rows
  if spec.person_splits:  # person split 0
    train_rows &= train["person_split_role"][:, 0] == 0
    query_rows &= evaluation["person_split_role"][:, 0] == 1
    gallery_rows &= evaluation["person_split_role"][:, 0] == 1
  splits = {}
  for name, index, rows in (
    ("train", train, train_rows),
    ("query", evaluation, query_rows),
    ("gallery", evaluation, gallery_rows),
  ):
    lengths = np.diff(index["frame_start"])[rows]
    splits[name] = _split_stats(index["pids"][rows], index["camids"][rows], lengths, spec)
  return dict(
    dataset=spec.name,
    protocol=protocol.name,
    person_split=0 if spec.person_splits else None,
    splits=splits,
  )


def main(argv: Sequence[str] | None = None) -> None:
  epilog = "datasets:\n\n" + "\n\n".join(
    textwrap.fill(f"{name}: {datasets.get(name).description}", 100, subsequent_indent="  ")
    + "\n"
    + textwrap.fill(
      datasets.get(name).instructions, 100, initial_indent="  ", subsequent_indent="  "
    )
    for name in datasets.NAMES
  )
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    epilog=epilog,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--dataset", required=True, choices=datasets.NAMES)
  parser.add_argument("--manual_dir", help="the user's download (to build)")
  parser.add_argument("--data_dir", required=True, help="where built datasets live")
  parser.add_argument(
    "--verify", action="store_true", help="check a finished build's shards against their checksums"
  )
  args = parser.parse_args(argv)
  if not args.verify and not args.manual_dir:
    parser.error("--manual_dir is needed to build (or pass --verify)")
  try:
    if args.verify:
      verify(args.dataset, args.data_dir)
    else:
      build(args.dataset, args.manual_dir, args.data_dir)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main()
