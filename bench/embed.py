r"""`embed`'s throughput on videos with tracks, each stage alone, and the bound the machine allows.

    python bench/embed.py [--config configs/synthetic.py] [--videos 1 2 4] [--eval_batch_size 64]
    python bench/embed.py --config configs/mars.py --eval_batch_size 8 --videos 1 2

Renders synthetic camera videos (`data_prep.synthetic.generate_footage`: H.264, 640 x 360 by
default, people crossing the scene with their MOTChallenge tracks), builds the config's model with
random weights (throughput does not depend on them) and, for 1, 2 and 4 videos, times in one run,
each after a warm-up:
- decoding: the videos decoded as `embed` decodes them (PyAV's threads, the videos at once);
- cropping: every box cut from its decoded frame and resized, as `embed` does it (all the boxes
  of a frame in one call, a thread per video);
- the network: the jitted feature function on the batches of T-frame chunks the tracks make;
- the whole `embed` path (`reid_jax.footage.embed.embed_tracks`), in which the three overlap.
Each stage's wall time and CPU time (all threads) are printed. The bound is the larger of the
slowest stage alone and the stages' CPU time summed over the cores: the whole cannot beat it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _timed(fn):
  """(result, wall seconds, CPU seconds of every thread of the process)."""
  wall, cpu = time.perf_counter(), time.process_time()
  result = fn()
  return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic.py"))
  parser.add_argument("--eval_batch_size", type=int, default=None)
  parser.add_argument("--videos", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument("--frames", type=int, default=360, help="frames per video")
  parser.add_argument("--people", type=int, default=4)
  parser.add_argument("--video_height", type=int, default=360)
  parser.add_argument("--video_width", type=int, default=640)
  args = parser.parse_args()

  import numpy as np
  import random_model  # the sibling module (bench/ is no package)

  from data_prep import synthetic
  from reid_jax.data.frames import crops_of
  from reid_jax.footage import embed as embed_lib
  from reid_jax.footage import videos as videos_lib
  from reid_jax.footage.sources import FootageTracklets, discover, pixel_box
  from reid_jax.inference import chunks
  from reid_jax.inference.parallel import interleave

  config, model = random_model.build(args.config)
  if args.eval_batch_size:
    config.data.eval_batch_size = args.eval_batch_size
  d = config.data
  cores = os.cpu_count()
  footage = tempfile.mkdtemp(prefix="reid_jax_embed_bench_")
  synthetic.generate_footage(
    footage,
    videos=max(args.videos),
    people=args.people,
    frames=args.frames,
    height=args.video_height,
    width=args.video_width,
  )
  all_tracks, _ = discover(footage)
  print(
    f"{config.model.name}, clips {d.num_frames}x{d.height}x{d.width}, batch {d.eval_batch_size}, "
    f"{cores} CPUs; videos {args.video_width}x{args.video_height}, {args.frames} frames, "
    f"{args.people} people each"
  )
  header = (
    f"{'videos':>6} {'boxes':>6} | {'decode s':>8} {'cpu':>6} | {'crop s':>7} {'cpu':>6} | "
    f"{'network s':>9} {'cpu':>6} | {'bound s':>7} {'embed s':>7} {'ratio':>6} {'frames/s':>9}"
  )
  rows = []
  for n in args.videos:
    paths = sorted({t.source for t in all_tracks})[:n]
    tracks = [t for t in all_tracks if t.source in paths]
    boxes = sum(t.num_frames for t in tracks)
    probes = {t.source: t.video for t in tracks}

    def decode():
      """Every frame of every video, each video decoded in its own thread."""
      readers = [
        lambda p=p: [
          [(p, n, image) for n, image in videos_lib.decoded_frames(probes[p], probes[p].frames)]
        ]
        for p in paths
      ]
      return {
        (p, n): image for items in interleave(readers, workers=cores) for p, n, image in items
      }

    images = decode()  # warm-up, and the frames the cropping stage reads
    _, decode_s, decode_cpu = _timed(decode)

    by_frame: dict = {}  # (video, frame) -> its boxes, as embed cuts them: one call a frame
    for t in tracks:
      for f, box in zip(t.frame_numbers, t.boxes):
        by_frame.setdefault((t.source, int(f)), []).append(box)

    def crop_all():
      def crop_video(p):
        return [
          [
            crops_of(
              images[key],
              [pixel_box(images[key].shape, b, "bench") for b in boxes],
              d.height,
              d.width,
            )
            for key, boxes in by_frame.items()
            if key[0] == p
          ]
        ]

      return list(interleave([lambda p=p: crop_video(p) for p in paths], workers=cores))

    crop_all()
    _, crop_s, crop_cpu = _timed(crop_all)

    source = FootageTracklets(tracks)
    plan = chunks.local_plan(source, num_frames=d.num_frames, batch_size=d.eval_batch_size)
    clips = np.random.default_rng(0).integers(
      0, 256, (d.eval_batch_size, d.num_frames, d.height, d.width, 3), dtype=np.uint8
    )
    model.features(clips).block_until_ready()

    def network():
      for _ in range(plan.num_batches):
        out = model.features(clips)
      out.block_until_ready()

    _, network_s, network_cpu = _timed(network)
    embed_lib.embed_tracks(model, tracks, d)  # compiles the accumulation
    _, embed_s, _ = _timed(lambda: embed_lib.embed_tracks(model, tracks, d))
    bound = max(decode_s, crop_s, network_s, (decode_cpu + crop_cpu + network_cpu) / cores)
    rows.append(
      (n, boxes, decode_s, decode_cpu, crop_s, crop_cpu, network_s, network_cpu, bound, embed_s)
    )
    print(f"  measured {n} video(s)", flush=True)
  print(header)
  for n, boxes, dec, dec_c, cr, cr_c, net, net_c, bound, whole in rows:
    print(
      f"{n:>6} {boxes:>6} | {dec:>8.2f} {dec_c:>6.2f} | {cr:>7.2f} {cr_c:>6.2f} | {net:>9.2f} "
      f"{net_c:>6.2f} | {bound:>7.2f} {whole:>7.2f} {whole / bound:>6.2f} {boxes / whole:>9.1f}"
    )
  print("ratio: the whole embed against the bound (1.00 = the machine's limit; <= 1.15 the goal)")


if __name__ == "__main__":
  main()
