"""The built dataset on disk: written by `data_prep.build`, read by `reid_jax.data`.

    <data_dir>/<dataset>/
      <version>/<dataset>-<split>.tfrecord-*   a standard TFDS dataset, one example per tracklet
      index/train.npz, index/eval.npz          per view, the arrays of INDEX_KEYS
      stats.json                               written last: a build is finished when it exists

An index holds per tracklet (arrays of length N) `pids`, `camids`, `tracklet_ids`, `roles` (codes
of ROLES), `person_split_role` (int8 [N, S], per person split 0 = train person, 1 = test person;
S = 0 for datasets without person splits) and `frame_start` ([N + 1], tracklet i's frames are rows
frame_start[i]:frame_start[i + 1] of the frame arrays); per frame `frame_numbers`, `frame_shard`
(into `shards`), `frame_offset` and `frame_length` (the byte range of its JPEG in that shard); and
`shards`, the shard paths relative to the dataset folder.
"""

from __future__ import annotations

import os

import numpy as np

ROLES = ("train", "query", "gallery")
ROLE_TRAIN, ROLE_QUERY, ROLE_GALLERY = range(len(ROLES))
VIEWS = ("train", "eval")  # the training pool and the evaluation set
TRACKLET_KEYS = ("pids", "camids", "tracklet_ids", "roles", "person_split_role", "frame_start")
FRAME_KEYS = ("frame_numbers", "frame_shard", "frame_offset", "frame_length")
INDEX_KEYS = (*TRACKLET_KEYS, *FRAME_KEYS, "shards")
FINISHED = "stats.json"
STATS_FIELDS = ("tracklets", "identities", "frames", "cameras", "min_len", "mean_len", "max_len")


def dataset_dir(data_dir: str, dataset: str) -> str:
  return os.path.join(data_dir, dataset)


def is_built(data_dir: str, dataset: str) -> bool:
  return os.path.exists(os.path.join(dataset_dir(data_dir, dataset), FINISHED))


def finished_dir(data_dir: str, dataset: str) -> str:
  """`<data_dir>/<dataset>`, checked to hold a finished build."""
  if not is_built(data_dir, dataset):
    raise FileNotFoundError(
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
    raise ValueError(f"{path}: no {missing} (written by another version? rebuild the dataset)")
  return index


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
