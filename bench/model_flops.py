r"""Parameters and FLOPs per clip of the three variants, and a CPU forward-pass time.

    python bench/model_flops.py [--frames 8 --height 256 --width 128] [--time resnet3d50_nl]

FLOPs come from XLA's cost analysis of the jitted evaluation-mode forward pass of one clip
(a multiply-add counts as 2 FLOPs). `--time NAME` also compiles that variant with random weights
and times its forward pass on one clip on the default device (median of 5 after a warm-up).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax.models import MODEL_NAMES, create_model, num_params


def forward_fn(graphdef):
  def forward(state, clips):
    model = nnx.merge(graphdef, state)
    model.eval()
    return model(clips)["features"]

  return forward


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--frames", type=int, default=8)
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--num_classes", type=int, default=625)
  parser.add_argument("--time", default="", help="variant whose forward pass to time")
  args = parser.parse_args()
  clip = jax.ShapeDtypeStruct((1, args.frames, args.height, args.width, 3), jnp.float32)
  print(
    f"clip {args.frames}x{args.height}x{args.width}, {args.num_classes} classes, "
    f"device {jax.devices()[0].device_kind}"
  )
  print(f"{'model':<16}{'parameters':>14}{'GFLOPs/clip':>14}")
  for name in MODEL_NAMES:
    model = nnx.eval_shape(
      lambda: create_model(name, num_classes=args.num_classes, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(model)
    cost = jax.jit(forward_fn(graphdef)).lower(state, clip).cost_analysis()
    print(f"{name:<16}{num_params(model):>14,}{cost['flops'] / 1e9:>14.1f}")
  if args.time:
    model = create_model(args.time, num_classes=args.num_classes, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    forward = jax.jit(forward_fn(graphdef))
    clips = jax.random.normal(jax.random.key(0), clip.shape)
    start = time.perf_counter()
    forward(state, clips).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(5):
      start = time.perf_counter()
      forward(state, clips).block_until_ready()
      times.append(time.perf_counter() - start)
    print(
      f"{args.time} forward, 1 clip: {np.median(times) * 1e3:.0f} ms "
      f"(min {min(times) * 1e3:.0f} ms; first call incl. compile {compile_s:.1f} s)"
    )


if __name__ == "__main__":
  main()
