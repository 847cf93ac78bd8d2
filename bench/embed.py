r"""`embed` throughput on a video with tracks, and what bounds it: decoding, cropping, the network.

    python bench/embed.py [--config configs/synthetic.py] [--eval_batch_size 64]

Renders a synthetic camera video (`data_prep.synthetic.generate_footage`: H.264, 640 x 360 by
default, people crossing the scene with their MOTChallenge tracks), builds the config's model
with random weights (throughput does not depend on them) and times, one after the other:
- decoding: one PyAV pass over the video to RGB arrays (video frames/s);
- cropping: each track box cut out and resized by the evaluation pipeline's function (boxes/s);
- the network: the jitted feature function on full batches of T-frame chunks (frames/s);
- the whole `embed` path: the chunk stream of the video's tracks into the per-tracklet
  averaging (`reid_jax.footage.embed.embed_tracks`, track frames/s), which runs the three in
  turn.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic.py"))
  parser.add_argument("--eval_batch_size", type=int, default=None)
  parser.add_argument("--frames", type=int, default=120, help="video frames")
  parser.add_argument("--people", type=int, default=4)
  parser.add_argument("--video_height", type=int, default=360)
  parser.add_argument("--video_width", type=int, default=640)
  args = parser.parse_args()

  import av
  import numpy as np
  import random_model  # the sibling module (bench/ is no package)

  from data_prep import synthetic
  from reid_jax.data.frames import resize_frame
  from reid_jax.footage import embed as embed_lib
  from reid_jax.footage.sources import FootageTracklets, crop, discover
  from reid_jax.inference import chunks

  config, model = random_model.build(args.config)
  if args.eval_batch_size:
    config.data.eval_batch_size = args.eval_batch_size
  d = config.data

  footage = tempfile.mkdtemp(prefix="reid_jax_embed_bench_")
  synthetic.generate_footage(
    footage,
    videos=1,
    people=args.people,
    frames=args.frames,
    height=args.video_height,
    width=args.video_width,
  )
  tracks, _ = discover(footage)
  video = tracks[0].source
  boxes = sum(t.num_frames for t in tracks)

  start = time.perf_counter()
  with av.open(video) as container:
    images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  decode_s = time.perf_counter() - start

  resize_frame(crop(images[0], tracks[0].boxes[0], "warm-up"), d.height, d.width).numpy()
  start = time.perf_counter()
  for t in tracks:
    for frame, box in zip(t.frame_numbers, t.boxes):
      resize_frame(crop(images[frame - 1], box, "bench"), d.height, d.width).numpy()
  crop_s = time.perf_counter() - start

  batch = d.eval_batch_size
  clips = np.random.default_rng(0).integers(0, 256, (batch, d.num_frames, d.height, d.width, 3))
  clips = clips.astype(np.uint8)
  model.features(clips).block_until_ready()
  start = time.perf_counter()
  model.features(clips).block_until_ready()
  network_s = time.perf_counter() - start

  plan = chunks.local_plan(FootageTracklets(tracks), num_frames=d.num_frames, batch_size=batch)
  num_batches = plan.num_batches
  embed_lib.embed_tracks(model, tracks, d)  # compiles the accumulation
  start = time.perf_counter()
  embed_lib.embed_tracks(model, tracks, d)
  embed_s = time.perf_counter() - start

  network_fps = batch * d.num_frames / network_s
  print(
    f"\n{config.model.name}, clips {d.num_frames}x{d.height}x{d.width}, batch {batch}, "
    f"{os.cpu_count()} CPUs; video {args.video_width}x{args.video_height}, {len(images)} "
    f"frames, {len(tracks)} tracks, {boxes} boxes"
  )
  print(f"  decoding      {len(images) / decode_s:8.1f} video frames/s")
  print(f"  cropping      {boxes / crop_s:8.1f} boxes/s")
  print(f"  network       {network_fps:8.1f} frames/s ({batch * d.num_frames} frames a batch)")
  print(f"  embed (all)   {boxes / embed_s:8.1f} track frames/s ({embed_s:.1f} s)")
  shares = dict(
    decoding=decode_s, cropping=crop_s, network=num_batches * batch * d.num_frames / network_fps
  )
  total = sum(shares.values())
  print(
    "  shares of the parts' time: " + ", ".join(f"{k} {v / total:.0%}" for k, v in shares.items())
  )


if __name__ == "__main__":
  main()
