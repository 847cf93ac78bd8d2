r"""XLA CPU's two convolution engines, YNNPACK (its default) and Eigen, on the network's shapes.

    python bench/conv_engines.py [--batch 8] [--reps 5] [--shapes stem,res2]

For each `k x k` conv of the I3D ResNet-50 NL at 8 x 256 x 128 clips (`conv_grads.FRAME_SHAPES`:
the stem's 15 stacked channels and the 3x3s, strided or not), the forward, the input gradient
and the kernel gradient of `cpu_conv.frame_conv` as XLA differentiates it, each on the whole
batch, in one process with XLA's default flags (YNNPACK) and in one with
`host_runtime.EIGEN_CONVOLUTIONS` (Eigen; what `host_runtime.configure_before_backends` sets).
Milliseconds, median of `--reps` calls after one warm-up, with GFLOP/s (a multiply-add is 2
FLOPs; a strided conv's input gradient counted as its forward's), and YNNPACK's time over
Eigen's.
"""

import argparse
import json
import os
import subprocess
import sys

from conv_grads import FRAME_SHAPES

PASSES = ("forward", "input grad", "kernel grad")


def measure(batch: int, reps: int, prefixes: tuple[str, ...]) -> dict:
  """name -> [ms of each of PASSES] in this process, as its XLA_FLAGS make XLA CPU run them."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from timing import median_seconds

  from reid_jax import host_runtime
  from reid_jax.models import cpu_conv

  jax.config.update("jax_cpu_enable_async_dispatch", False)  # as configure_before_backends
  host_runtime.keep_freed_memory()
  rng = np.random.default_rng(0)
  out = {}
  for name, t, h, w, c_in, c_out, k, stride in FRAME_SHAPES:
    if prefixes and not name.startswith(prefixes):
      continue
    frames = jnp.asarray(rng.standard_normal((batch * t, h, w, c_in), np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out), np.float32) * 0.05)
    conv = lambda f, w_, s=stride: cpu_conv.frame_conv(f, w_, s)
    dy = jnp.ones_like(conv(frames, kernel))
    programs = (
      jax.jit(conv),
      jax.jit(lambda f, w_, g: jax.vjp(lambda z: conv(z, w_), f)[1](g)[0]),
      jax.jit(lambda f, w_, g: jax.vjp(lambda z: conv(f, z), w_)[1](g)[0]),
    )
    args = ((frames, kernel), (frames, kernel, dy), (frames, kernel, dy))
    times = []
    for index, (program, a) in enumerate(zip(programs, args)):
      if index == 1 and name.startswith("stem"):
        times.append(None)  # the stem's input is the clip: no input gradient
        continue
      times.append(1e3 * median_seconds(lambda p=program, a=a: jax.block_until_ready(p(*a)), reps))
    out[name] = dict(times=times, gflop=2 * dy.size * k * k * c_in / 1e9)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8, help="clips")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--shapes", default="", help="comma list of row-name prefixes")
  parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  prefixes = tuple(p for p in args.shapes.split(",") if p)
  if args.measure:
    print(json.dumps(measure(args.batch, args.reps, prefixes)))
    return
  from reid_jax import host_runtime

  results = {}
  base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  for engine, flags in (("YNNPACK", ""), ("Eigen", host_runtime.EIGEN_CONVOLUTIONS)):
    env = dict(base, XLA_FLAGS=flags) if flags else base
    cmd = [sys.executable, __file__, "--measure", f"--batch={args.batch}", f"--reps={args.reps}"]
    done = subprocess.run(
      cmd + [f"--shapes={args.shapes}"], env=env, capture_output=True, text=True, check=True
    )
    results[engine] = json.loads(done.stdout.splitlines()[-1])
  print(f"batch {args.batch}, ms (GFLOP/s), median of {args.reps}; YNNPACK / Eigen")
  print("| shape | pass | YNNPACK | Eigen | YNNPACK / Eigen |")
  print("|---|---|---:|---:|---:|")
  total = {"YNNPACK": 0.0, "Eigen": 0.0}
  for name, ynn in results["YNNPACK"].items():
    eigen = results["Eigen"][name]
    for label, a, b in zip(PASSES, ynn["times"], eigen["times"]):
      if a is None:
        continue
      total["YNNPACK"], total["Eigen"] = total["YNNPACK"] + a, total["Eigen"] + b
      g = ynn["gflop"]
      print(
        f"| {name} | {label} | {a:.1f} ({g / a * 1e3:.0f}) | {b:.1f} ({g / b * 1e3:.0f}) "
        f"| {a / b:.2f} |"
      )
  print(
    f"| all | | {total['YNNPACK']:.0f} | {total['Eigen']:.0f} | "
    f"{total['YNNPACK'] / total['Eigen']:.2f} |"
  )


if __name__ == "__main__":
  main()
