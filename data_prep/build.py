r"""Builds a video re-id dataset from a user's download.

    python -m data_prep.build --dataset=mars --manual_dir=/data/MARS --data_dir=/data/reid

`dataset` is one of mars, ilidsvid, prid2011, duke. The result, `<data_dir>/<dataset>/`, holds
- `1.0.0/`: a standard TFDS dataset (TFRecord shards, one example per tracklet; see
  `data_prep.builders`);
- `index/train.npz`, `index/eval.npz`: per tracklet its metadata and, per frame, the shard and byte
  range of its JPEG inside the shards. TFDS reads records sequentially, but the training sampler
  wants 8 frames of an arbitrary tracklet: with the byte ranges the input pipeline reads exactly
  those 8 JPEGs from memory-mapped shards, so a clip costs 8 small reads and 8 decodes whatever the
  tracklet's length (MARS tracklets reach 920 frames). `train` holds the tracklets training draws
  from (MARS and Duke: the train split; iLIDS-VID and PRID2011: their one TFDS split,
  `tracklets`, filtered per person split by the pipeline), `eval` the evaluation set (MARS: all
  test tracklets, queries flagged; Duke: query then gallery; iLIDS-VID and PRID2011: all
  tracklets of both cameras);
- `stats.json`: per split (`train`, `query`, `gallery`; iLIDS-VID and PRID2011: person split 0)
  tracklets, identities (junk -1 and distractor 0 not counted), frames, cameras and min / mean /
  max tracklet length. Junk and distractor tracklets count in the gallery, which for MARS is all
  test tracklets (official protocol).

The build is atomic: everything is written under `<data_dir>/.<dataset>.incomplete-*` and renamed
to `<data_dir>/<dataset>` only when complete, so a failed or interrupted build leaves nothing that
looks finished. Re-running a finished build does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

from data_prep import layouts

# Which TFDS splits make up the training pool and the evaluation set of each dataset.
VIEWS = {
  "mars": {"train": ("train",), "eval": ("test",)},
  "ilidsvid": {"train": ("tracklets",), "eval": ("tracklets",)},
  "prid2011": {"train": ("tracklets",), "eval": ("tracklets",)},
  "duke": {"train": ("train",), "eval": ("query", "gallery")},
}
STATS_FIELDS = ("tracklets", "identities", "frames", "cameras", "min_len", "mean_len", "max_len")


def build(dataset: str, manual_dir: str, data_dir: str) -> str:
  """Builds `dataset` from `manual_dir` into `<data_dir>/<dataset>`; returns that path.

  A no-op (besides printing the statistics) when the dataset is already built.
  """
  if dataset not in layouts.SPLITS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(layouts.SPLITS)}")
  final_dir = os.path.join(data_dir, dataset)
  stats_path = os.path.join(final_dir, "stats.json")
  if os.path.exists(stats_path):
    with open(stats_path) as f:
      print(f"{final_dir} is already built; nothing to do (delete it to rebuild).")
      print(format_stats(json.load(f)))
    return final_dir
  if os.path.exists(final_dir):
    raise FileExistsError(f"{final_dir} exists but holds no finished build; remove it first")
  # Fail on layout errors before TFDS starts (and before the slow TensorFlow import).
  layouts.read_layout(dataset, manual_dir)

  import tensorflow_datasets as tfds

  from data_prep import builders

  os.makedirs(data_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{dataset}.incomplete-", dir=data_dir)
  try:
    builder = builders.BUILDERS[dataset](data_dir=staging)
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
    views = {}
    for view, splits in VIEWS[dataset].items():
      views[view] = index_splits(staged, version_dir, dataset, splits)
      np.savez(os.path.join(staged, "index", f"{view}.npz"), **views[view])
    stats = dataset_stats(dataset, views["train"], views["eval"])
    with open(os.path.join(staged, "stats.json"), "w") as f:
      json.dump(stats, f, indent=2)
    os.rename(staged, final_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  print(format_stats(stats))
  return final_dir


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


def index_splits(
  dataset_dir: str, version_dir: str, dataset: str, splits: Sequence[str]
) -> dict[str, np.ndarray]:
  """Tracklet metadata and per-frame byte ranges of `splits`, read back from the shards.

  Reading the written records (rather than trusting the writer) makes the index describe exactly
  what is on disk. Tracklets come split by split, each in the canonical `index` order.
  """
  import tensorflow as tf

  shards, rows = [], []
  for split in splits:
    prefix = f"{dataset}-{split}.tfrecord-"
    names = sorted(
      n for n in os.listdir(os.path.join(dataset_dir, version_dir)) if n.startswith(prefix)
    )
    split_rows = []
    for name in names:
      shard = len(shards)
      shards.append(os.path.join(version_dir, name))
      for offset, record in _tfrecords(os.path.join(dataset_dir, shards[-1])):
        feature = tf.train.Example.FromString(record).features.feature
        ints = lambda key: list(feature[key].int64_list.value)
        frame_offsets, cursor = [], 0
        for frame in feature["frames"].bytes_list.value:
          # A frame's JPEG bytes appear verbatim (after a length prefix) in the record.
          cursor = record.index(frame, cursor)
          frame_offsets.append(offset + cursor)
          cursor += len(frame)
        split_rows.append(
          dict(
            index=ints("index")[0],
            pid=ints("pid")[0],
            camid=ints("camid")[0],
            tracklet_id=ints("tracklet_id")[0],
            role=ints("role")[0],
            person_split_role=ints("person_split_role") if "person_split_role" in feature else [],
            frame_numbers=ints("frame_numbers"),
            frame_shard=[shard] * len(frame_offsets),
            frame_offset=frame_offsets,
            frame_length=[len(f) for f in feature["frames"].bytes_list.value],
          )
        )
    rows += sorted(split_rows, key=lambda r: r["index"])
  num_frames = np.array([len(r["frame_offset"]) for r in rows], np.int64)
  column = lambda key, dtype: np.array([r[key] for r in rows], dtype)
  frames = lambda key, dtype: np.concatenate([np.asarray(r[key], dtype) for r in rows])
  return dict(
    pids=column("pid", np.int64),
    camids=column("camid", np.int64),
    tracklet_ids=column("tracklet_id", np.int64),
    roles=column("role", np.int8),
    person_split_role=np.array([r["person_split_role"] for r in rows], np.int8).reshape(
      len(rows), -1
    ),
    frame_start=np.concatenate([[0], np.cumsum(num_frames)]),
    frame_numbers=frames("frame_numbers", np.int64),
    frame_shard=frames("frame_shard", np.int32),
    frame_offset=frames("frame_offset", np.int64),
    frame_length=frames("frame_length", np.int64),
    shards=np.array(shards),
  )


def _split_stats(pids: np.ndarray, camids: np.ndarray, lengths: np.ndarray) -> dict:
  if len(pids) == 0:
    return dict.fromkeys(STATS_FIELDS, 0)
  return dict(
    tracklets=int(len(pids)),
    identities=int(len(np.unique(pids[pids > 0]))),
    frames=int(lengths.sum()),
    cameras=int(len(np.unique(camids))),
    min_len=int(lengths.min()),
    mean_len=round(float(lengths.mean()), 2),
    max_len=int(lengths.max()),
  )


def dataset_stats(dataset: str, train: dict, evaluation: dict) -> dict[str, dict]:
  """The statistics of `stats.json` from the train and eval indexes."""
  query_role, gallery_role = layouts.ROLES.index("query"), layouts.ROLES.index("gallery")
  train_rows = np.ones(len(train["pids"]), bool)
  query_rows = evaluation["roles"] == query_role
  gallery_rows = evaluation["roles"] == gallery_role
  if dataset == "mars":  # official protocol: the gallery is every test tracklet
    gallery_rows |= query_rows
  if evaluation["person_split_role"].shape[1]:  # person split 0
    train_rows &= train["person_split_role"][:, 0] == 0
    query_rows &= evaluation["person_split_role"][:, 0] == 1
    gallery_rows &= evaluation["person_split_role"][:, 0] == 1
  stats = {}
  for name, index, rows in (
    ("train", train, train_rows),
    ("query", evaluation, query_rows),
    ("gallery", evaluation, gallery_rows),
  ):
    lengths = np.diff(index["frame_start"])[rows]
    stats[name] = _split_stats(index["pids"][rows], index["camids"][rows], lengths)
  return stats


def format_stats(stats: dict[str, dict]) -> str:
  """`stats.json` as a table, one row per split."""
  lines = [f"{'split':<8}" + "".join(f"{f:>12}" for f in STATS_FIELDS)]
  for split, row in stats.items():
    lines.append(f"{split:<8}" + "".join(f"{row[f]:>12}" for f in STATS_FIELDS))
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=sorted(layouts.SPLITS))
  parser.add_argument("--manual_dir", required=True, help="the user's download")
  parser.add_argument("--data_dir", required=True, help="where built datasets live")
  args = parser.parse_args(argv)
  try:
    build(args.dataset, args.manual_dir, args.data_dir)
  except layouts.LayoutError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main()
