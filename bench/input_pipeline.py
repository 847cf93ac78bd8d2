r"""Input pipeline throughput: training clips/s and evaluation chunks/s on this host.

    python bench/input_pipeline.py                       # synthetic MARS-layout data, 256x128
    python bench/input_pipeline.py --data_dir=/data/reid --dataset=mars   # an already built set

Without a built dataset in `--data_dir`, a synthetic one at 256x128 (tracklets of 16-64 frames,
MARS-like JPEG sizes) is generated and built there first and kept for the next run. Training
clips are 8 x 256 x 128 as in the paper; the figure counts clips fully decoded, cropped, flipped
and batched, i.e. what the trainer receives. Run it on an otherwise idle machine: tf.data uses
every core.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import build as build_lib  # noqa: E402
from data_prep import built, synthetic  # noqa: E402
from reid_jax import data  # noqa: E402
from reid_jax.inference import chunks  # noqa: E402


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _rate(iterator, steps: int, warmup: int, count) -> tuple[float, float]:
  """Items per second and per CPU-second over up to `steps` batches after `warmup` batches.

  On a shared machine the wall-clock rate depends on what else runs; items per CPU-second
  (CPU time of this process, all threads) does not, and times the core count it bounds what
  an idle host of that many cores delivers.
  """
  for _ in itertools.islice(iterator, warmup):
    pass
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  total = sum(count(batch) for batch in itertools.islice(iterator, steps))
  return total / (time.perf_counter() - start), total / (_cpu_seconds() - start_cpu)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="/tmp/reid_jax_bench")
  parser.add_argument("--dataset", default="mars")
  parser.add_argument(
    "--identities",
    type=int,
    default=64,
    help="synthetic train (and test) identities when generating",
  )
  parser.add_argument("--P", type=int, default=32)
  parser.add_argument("--K", type=int, default=4)
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="timed training batches")
  parser.add_argument("--eval_batch_size", type=int, default=64, help="chunks per eval batch")
  parser.add_argument("--eval_steps", type=int, default=20, help="timed eval batches")
  args = parser.parse_args()

  if not built.is_built(args.data_dir, args.dataset):
    if args.dataset != "mars":
      raise SystemExit(f"build {args.dataset} into {args.data_dir} first")
    download = os.path.join(args.data_dir, "synthetic_download")
    if not os.path.exists(os.path.join(download, "info", "tracks_test_info.mat")):
      print(f"generating synthetic data in {download} ...", flush=True)
      synthetic.generate(
        download,
        identities=args.identities,
        height=args.height,
        width=args.width,
        min_len=16,
        max_len=64,
      )
    build_lib.build("mars", download, args.data_dir)

  train = data.make_train_iterator(
    args.data_dir,
    args.dataset,
    P=args.P,
    K=args.K,
    height=args.height,
    width=args.width,
    process_index=0,
    process_count=1,
  )
  clips, per_cpu = _rate(train, args.steps, warmup=2, count=lambda b: len(b["clips"]))
  print(
    f"training: {clips:.1f} clips/s, {per_cpu:.1f} clips per CPU-second  ({args.P}x{args.K} "
    f"clips of 8x{args.height}x{args.width}, {args.steps} batches, {os.cpu_count()} CPUs)",
    flush=True,
  )

  source = data.BuiltTracklets(args.data_dir, args.dataset)
  evaluation = chunks.chunk_batches(
    source,
    num_frames=8,
    height=args.height,
    width=args.width,
    batch_size=args.eval_batch_size,
    process_index=0,
    process_count=1,
  )
  chunk_rate, per_cpu = _rate(
    evaluation, args.eval_steps, warmup=2, count=lambda b: b["valid"].sum()
  )
  print(
    f"evaluation: {chunk_rate:.1f} chunks/s, {per_cpu:.1f} chunks per CPU-second  ({args.eval_batch_size}"
    f" chunks of 8x{args.height}x{args.width} per batch, a tracklet's last one padded, "
    f"{args.eval_steps} batches)",
    flush=True,
  )


if __name__ == "__main__":
  main()
