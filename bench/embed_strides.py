r"""`embed.frame_stride`: rank-1, mAP and time of embedding every n-th frame, on the evaluation
tracklets of a trained run's dataset written out as tracklet folders.

    python bench/embed_strides.py --workdir workdirs/demo [--strides 1 2 4 8]

Writes the run's evaluation set (the built dataset's JPEGs, as they are) as
`<camera>/<tracklet>/<frame>.jpg` folders, restores the run's model once, embeds the folders at
each stride as `embed` does (`reid_jax.footage.embed.embed_tracks`, after a warm-up), and scores
the features with the dataset's default protocol. Stride 1 equals `extract` (the parity test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_tracklet_folders(data_dir: str, dataset: str, out: str) -> None:
  """The evaluation tracklets of a built dataset as `<out>/cam<c>/t<row>/<frame>.jpg`."""
  import numpy as np

  from data_prep import built

  index = built.load_index(data_dir, dataset, "eval")
  root = built.finished_dir(data_dir, dataset)
  shards = {}
  for row in range(len(index["pids"])):
    folder = os.path.join(out, f"cam{index['camids'][row]}", f"t{row:05d}")
    os.makedirs(folder)
    for frame in range(index["frame_start"][row], index["frame_start"][row + 1]):
      shard = str(index["shards"][index["frame_shard"][frame]])
      if shard not in shards:
        shards[shard] = np.memmap(os.path.join(root, shard), np.uint8, mode="r")
      start = index["frame_offset"][frame]
      with open(os.path.join(folder, f"{frame}.jpg"), "wb") as f:
        f.write(shards[shard][start : start + index["frame_length"][frame]].tobytes())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic.py"))
  parser.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "demo"))
  parser.add_argument("--strides", type=int, nargs="+", default=[1, 2, 4, 8])
  args = parser.parse_args()

  import numpy as np
  import random_model  # the sibling module (bench/ is no package)

  from reid_jax import config as config_lib
  from reid_jax.data.tracklets import BuiltTracklets
  from reid_jax.evaluation.protocols import run_protocol
  from reid_jax.footage import embed as embed_lib
  from reid_jax.footage.sources import check_frames, discover
  from reid_jax.footage.tracks import Skipped
  from reid_jax.inference import model as model_lib

  config = random_model.load(args.config)
  model = model_lib.restore(config, args.workdir)
  data_dir = config_lib.data_dir(config, args.workdir)
  table = BuiltTracklets(data_dir, config.dataset.name).table
  footage = tempfile.mkdtemp(prefix="reid_jax_strides_")
  write_tracklet_folders(data_dir, config.dataset.name, footage)
  tracks, _ = discover(footage)
  tracks = check_frames(tracks, skip_bad=False, skipped=Skipped())
  rows = np.array([int(t.name.split("/t")[1]) for t in tracks])
  protocol = config_lib.protocol(config)
  embed_lib.embed_tracks(model, tracks[:8], config.data)  # compiles
  results = []
  for stride in args.strides:
    strided = [t.every(stride) for t in tracks]
    start = time.perf_counter()
    features = embed_lib.embed_tracks(model, strided, config.data)
    seconds = time.perf_counter() - start
    ordered = np.empty_like(features)
    ordered[rows] = features
    scores = run_protocol(protocol, ordered, table, metric=config.eval.metric)
    results.append((stride, sum(t.num_frames for t in strided), seconds, scores))
  print(
    f"\n{config.model.name} of {args.workdir} (step {model.step}), {len(tracks)} evaluation "
    f"tracklets of {config.dataset.name} as folders, protocol {protocol}, {os.cpu_count()} CPUs"
  )
  print(f"{'stride':>6} {'frames':>8} {'seconds':>8} {'rank-1':>7} {'mAP':>7}")
  for stride, frames, seconds, scores in results:
    print(
      f"{stride:>6} {frames:>8} {seconds:>8.2f} {100 * scores['rank1']:>6.2f}% "
      f"{100 * scores['mAP']:>6.2f}%"
    )


if __name__ == "__main__":
  main()
