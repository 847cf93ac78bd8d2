"""The built dataset on disk: written by `data_prep.build`, read by `reid_jax.data`.

    <data_dir>/<dataset>/
      <version>/<dataset>-<split>.tfrecord-*   a standard TFDS dataset, one example per tracklet
      index/train.npz, index/eval.npz          per view, the arrays of INDEX_KEYS
      index/shards.json                        per shard: its size and SHA-256
      stats.json                               written last: a build is finished when it exists

An index holds per tracklet (arrays of length N) `pids`, `camids`, `tracklet_ids`, `roles` (codes
of ROLES), `person_split_role` (int8 [N, S], per person split 0 = train person, 1 = test person;
S = 0 for datasets without person splits) and `frame_start` ([N + 1], tracklet i's frames are rows
frame_start[i]:frame_start[i + 1] of the frame arrays); per frame `frame_numbers`, `frame_shard`
(into `shards`), `frame_offset` and `frame_length` (the byte range of its JPEG in that shard); and
`shards`, the shard paths relative to the dataset folder.
"""

from __future__ import annotations

import json
import os

import numpy as np

from data_prep.errors import UserError

ROLES = ("train", "query", "gallery")
ROLE_TRAIN, ROLE_QUERY, ROLE_GALLERY = range(len(ROLES))
VIEWS = ("train", "eval")  # the training pool and the evaluation set
TRACKLET_KEYS = ("pids", "camids", "tracklet_ids", "roles", "person_split_role", "frame_start")
FRAME_KEYS = ("frame_numbers", "frame_shard", "frame_offset", "frame_length")
INDEX_KEYS = (*TRACKLET_KEYS, *FRAME_KEYS, "shards")
FINISHED = "stats.json"
SHARDS = os.path.join("index", "shards.json")  # per shard path: its size in bytes and SHA-256
STATS_FIELDS = ("tracklets", "identities", "frames", "cameras", "min_len", "mean_len", "max_len")


def dataset_dir(data_dir: str, dataset: str) -> str:
  return os.path.join(data_dir, dataset)


def is_built(data_dir: str, dataset: str) -> bool:
  return os.path.exists(os.path.join(dataset_dir(data_dir, dataset), FINISHED))


class DatasetNotBuilt(UserError, FileNotFoundError):
  """No finished build where one is needed; the message says how to build it."""


class OutdatedBuild(UserError, ValueError):
  """A build of an earlier version of the format; the message says to rebuild it."""


def finished_dir(data_dir: str, dataset: str) -> str:
  """`<data_dir>/<dataset>`, checked to hold a finished build."""
  if not is_built(data_dir, dataset):
    raise DatasetNotBuilt(
      f"no built dataset at {dataset_dir(data_dir, dataset)}; build it with `python -m "
      f"data_prep.build --dataset={dataset} --manual_dir=<download> --data_dir={data_dir}`"
    )
  return dataset_dir(data_dir, dataset)


def index_path(root: str, view: str) -> str:
  return os.path.join(root, "index", f"{view}.npz")


def load_index(data_dir: str, dataset: str, view: str) -> dict[str, np.ndarray]:
  """The `train` or `eval` index of a finished build."""
  path = index_path(finished_dir(data_dir, dataset), view)
  with np.load(path) as f:
    index = dict(f)
  missing = [k for k in INDEX_KEYS if k not in index]
  if missing:
    raise OutdatedBuild(f"{path}: no {missing} (written by another version? rebuild the dataset)")
  check_shard_sizes(dataset_dir(data_dir, dataset), [str(s) for s in index["shards"]])
  return index


class DamagedDataset(UserError, ValueError):
  """A built dataset's shard is missing, or not what the build wrote; the message names it."""


def shard_records(root: str) -> dict[str, dict] | None:
  """`index/shards.json` of the build at `root` (None for builds of earlier versions)."""
  path = os.path.join(root, SHARDS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_shard_sizes(root: str, shards: list[str]) -> None:
  """Each shard has the size the build recorded: cheap (one stat each), catches truncation."""
  records = shard_records(root)
  if records is None:
    return
  for shard in shards:
    path = os.path.join(root, shard)
    size = os.path.getsize(path) if os.path.exists(path) else None
    if size != records[shard]["bytes"]:
      found = "is missing" if size is None else f"has {size} bytes"
      raise DamagedDataset(
        f"{path} {found}, the build wrote {records[shard]['bytes']}: the dataset is damaged "
        f"(python -m data_prep.build --verify names what; rebuild it to repair)"
      )


def format_stats(stats: dict) -> str:
  """`stats.json` as a table, one row per split, under a line naming the protocol (builds of
  earlier versions, whose `stats.json` holds only the splits, print without it)."""
  lines = []
  if "splits" in stats:
    title = f"{stats['dataset']}, protocol {stats['protocol']}"
    if stats["person_split"] is not None:
      title += f", person split {stats['person_split']}"
    lines.append(title)
  lines.append(f"{'split':<8}" + "".join(f"{f:>12}" for f in STATS_FIELDS))
  for split, row in stats.get("splits", stats).items():
    lines.append(f"{split:<8}" + "".join(f"{row[f]:>12}" for f in STATS_FIELDS))
  return "\n".join(lines)
