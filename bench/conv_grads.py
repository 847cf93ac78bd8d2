r"""Time of the convolutions' gradients per layer shape: XLA's against the CPU ones (`auto`).

    python bench/conv_grads.py [--batch 8] [--reps 3] [--shapes stem,res3]

For each convolution shape of the I3D ResNet-50 NL at 8 x 256 x 128 clips (configs/mars.py's
network, res2 at 8x63x31), the backward of `reid_jax.models.cpu_conv`'s formulations with
XLA's gradients (what `model.conv_grads="xla"` runs) and with those `"auto"` runs on a CPU:
`k x k` convs over frames, the kernel gradient alone (the input gradient is XLA's in both),
tap-wise or XLA's by chunks of frames (`cpu_conv.uses_tapwise_kernel_grad`); `k_t x 1 x 1`
convs, input and kernel gradients together, tap-wise. Milliseconds, median of `--reps`
calls after one warm-up, with GFLOP/s (a multiply-add is 2 FLOPs) and the largest difference
between the two, relative to the largest gradient entry.

    python bench/conv_grads.py --chunk_sweep [--batch 2]

times instead XLA's kernel gradient of each chunked shape on chunks of 1, 2, 4, ... frames up to
the whole batch and on slabs of 1/2, 1/4 and 1/8 of a frame's rows, and marks the chunk
`cpu_conv.kernel_grad_chunks` picks: where it is not the fastest on a CPU,
`cpu_conv.KERNEL_GRAD_CHUNK_BYTES` is the figure to tune.

    python bench/conv_grads.py --demo [--chunk_sweep]

does either for the shapes of configs/synthetic.py's network (width 16, 4 x 64 x 32 clips), at
batch 32 by default, as the demo trains.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_seconds

from reid_jax import host_runtime
from reid_jax.models import cpu_conv

# (name, frames per clip, H, W, C_in, C_out, k, stride)
FRAME_SHAPES = (
  ("stem 7x7/2 15->64", 8, 256, 128, 15, 64, 7, 2),
  ("res2 3x3 64", 8, 63, 31, 64, 64, 3, 1),
  ("res3 3x3/2 128", 8, 63, 31, 128, 128, 3, 2),
  ("res3 3x3 128", 4, 32, 16, 128, 128, 3, 1),
  ("res4 3x3/2 256", 4, 32, 16, 256, 256, 3, 2),
  ("res4 3x3 256", 4, 16, 8, 256, 256, 3, 1),
  ("res5 3x3/2 512", 4, 16, 8, 512, 512, 3, 2),
  ("res5 3x3 512", 4, 8, 4, 512, 512, 3, 1),
)
# The same for configs/synthetic.py's network (width 16, depths 1-2-2-1, 4 x 64 x 32 clips).
DEMO_FRAME_SHAPES = (
  ("stem 7x7/2 15->16", 4, 64, 32, 15, 16, 7, 2),
  ("res2 3x3 16", 4, 16, 8, 16, 16, 3, 1),
  ("res3 3x3/2 32", 2, 16, 8, 32, 32, 3, 2),
  ("res3 3x3 32", 2, 8, 4, 32, 32, 3, 1),
  ("res4 3x3/2 64", 2, 8, 4, 64, 64, 3, 2),
  ("res4 3x3 64", 2, 4, 2, 64, 64, 3, 1),
  ("res5 3x3/2 128", 2, 4, 2, 128, 128, 3, 2),
)
# (name, T, H, W, C_in, C_out, k_t)
POINTWISE_SHAPES = (
  ("res2 3x1x1 256->64", 8, 63, 31, 256, 64, 3),
  ("res2 1x1 64->256", 8, 63, 31, 64, 256, 1),
  ("res3 3x1x1 512->128", 4, 32, 16, 512, 128, 3),
  ("res3 1x1 512->128", 4, 32, 16, 512, 128, 1),
  ("res4 3x1x1 1024->256", 4, 16, 8, 1024, 256, 3),
  ("res4 1x1 256->1024", 4, 16, 8, 256, 1024, 1),
  ("res5 1x1 2048->512", 4, 8, 4, 2048, 512, 1),
)
DEMO_POINTWISE_SHAPES = (
  ("res2 3x1x1 16->16", 4, 16, 8, 16, 16, 3),
  ("res2 1x1 16->64", 4, 16, 8, 16, 64, 1),
  ("res3 3x1x1 64->32", 2, 16, 8, 64, 32, 3),
  ("res3 1x1 32->128", 2, 8, 4, 32, 128, 1),
  ("res4 3x1x1 128->64", 2, 8, 4, 128, 64, 3),
  ("res4 1x1 64->256", 2, 4, 2, 64, 256, 1),
  ("res5 1x1 256->512", 2, 2, 1, 256, 512, 1),
)


def compare(name, xla, tapwise, args, flops, reps):
  want, got = xla(*args), tapwise(*args)
  err = max(
    float(jnp.abs(a - b).max() / jnp.abs(a).max())
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got))
  )
  t_xla, t_taps = (
    median_seconds(lambda f=f: jax.block_until_ready(f(*args)), reps) for f in (xla, tapwise)
  )
  print(
    f"| {name} | {1e3 * t_xla:.1f} ({flops / t_xla / 1e9:.1f}) "
    f"| {1e3 * t_taps:.1f} ({flops / t_taps / 1e9:.1f}) | {t_xla / t_taps:.2f} | {err:.0e} |",
    flush=True,
  )


def frame_arrays(normal, batch, t, h, w, c_in, c_out, k, stride):
  """Random frames, output gradient and kernel of a `FRAME_SHAPES` row at `batch` clips."""
  frames = normal(batch * t, h, w, c_in)
  dy = normal(batch * t, (h - 1) // stride + 1, (w - 1) // stride + 1, c_out)
  return frames, dy, normal(k, k, c_in, c_out)


def chunk_sweep(normal, shapes, batch: int, reps: int, prefixes) -> None:
  # (frames, 1 / rows): slabs of a frame, then 1, 2, 4, ... frames up to the largest batch.
  most = max(batch * t for _, t, *_ in shapes)
  sizes = [(1, 8), (1, 4), (1, 2)] + [(2**i, 1) for i in range(most.bit_length())]
  names = [f"1/{d} frame" if d > 1 else f"{f} frames" for f, d in sizes]
  print(f"batch {batch}, XLA's kernel gradient by chunks, ms, median of {reps}")
  print("| shape | frames | " + " | ".join(names) + " |")
  print("|---|---:|" + "---:|" * len(sizes))
  for name, t, h, w, c_in, c_out, k, stride in shapes:
    if not name.startswith(prefixes) or cpu_conv.uses_tapwise_kernel_grad((k, k, c_in), stride):
      continue
    frames, dy, kernel = frame_arrays(normal, batch, t, h, w, c_in, c_out, k, stride)
    picked = cpu_conv.kernel_grad_chunks(frames.shape, dy.shape, frames.dtype.itemsize)
    cells = []
    for per_frames, parts in sizes:
      chunk = (per_frames, -(-dy.shape[1] // parts))
      if per_frames > frames.shape[0]:
        cells.append("")
        continue
      grad = jax.jit(
        lambda f, dy, c=chunk: cpu_conv._frame_kernel_grad_chunked(f, dy, kernel, stride, c)
      )
      ms = 1e3 * median_seconds(lambda g=grad: jax.block_until_ready(g(frames, dy)), reps)
      cells.append(f"**{ms:.1f}**" if chunk == picked else f"{ms:.1f}")
    print(f"| {name} | {frames.shape[0]} | {' | '.join(cells)} |", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=None, help="clips (default 8; --demo: 32)")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--shapes", default="", help="comma list of row-name prefixes")
  parser.add_argument(
    "--chunk_sweep", action="store_true", help="time the chunked kernel gradients by chunk size"
  )
  parser.add_argument("--demo", action="store_true", help="configs/synthetic.py's shapes")
  args = parser.parse_args()
  args.batch = args.batch or (32 if args.demo else 8)
  shapes, pointwise_shapes = (
    (DEMO_FRAME_SHAPES, DEMO_POINTWISE_SHAPES) if args.demo else (FRAME_SHAPES, POINTWISE_SHAPES)
  )
  host_runtime.configure_before_backends()
  host_runtime.keep_freed_memory()
  prefixes = tuple(args.shapes.split(",")) if args.shapes else ("",)
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  if args.chunk_sweep:
    chunk_sweep(normal, shapes, args.batch, args.reps, prefixes)
    return
  print(f"batch {args.batch}, ms (GFLOP/s), median of {args.reps}")
  print("| shape | XLA | auto | XLA / auto | max difference |")
  print("|---|---:|---:|---:|---:|")
  for name, t, h, w, c_in, c_out, k, stride in shapes:
    if not name.startswith(prefixes):
      continue
    frames, dy, kernel = frame_arrays(normal, args.batch, t, h, w, c_in, c_out, k, stride)
    xla = jax.jit(lambda f, dy: cpu_conv._frame_kernel_grad_xla(f, dy, kernel, stride))
    ours = jax.jit(lambda f, dy: cpu_conv._frame_kernel_grad_cpu(f, dy, kernel, stride))
    if cpu_conv.uses_tapwise_kernel_grad(kernel.shape, stride):
      how = "tap-wise"
    else:
      chunk = cpu_conv.kernel_grad_chunks(frames.shape, dy.shape, frames.dtype.itemsize)
      how = "XLA" if chunk == (frames.shape[0], dy.shape[1]) else "chunks of {} x {}".format(*chunk)
    flops = 2 * dy.size * c_in * k * k
    compare(f"{name} kernel grad ({how})", xla, ours, (frames, dy), flops, args.reps)
  for name, t, h, w, c_in, c_out, k_t in pointwise_shapes:
    if not name.startswith(prefixes):
      continue
    x, dy = normal(args.batch, t, h, w, c_in), normal(args.batch, t, h, w, c_out)
    kernel = normal(k_t, c_in, c_out) * 0.05
    xla = jax.jit(cpu_conv._pointwise_grads_xla)
    taps = jax.jit(cpu_conv._pointwise_grads_taps)
    flops = 2 * 2 * dy.size * c_in * k_t
    compare(f"{name} input + kernel grads (tap-wise)", xla, taps, (x, dy, kernel), flops, args.reps)


if __name__ == "__main__":
  main()
