r"""GFLOP/s of formulations of the I3D's convolutions under XLA, beside PyTorch on the same shapes.

    python bench/conv_formulations.py [--batch 2] [--reps 3] [--pass train|forward]
        [--only spatial|temporal|stem|all]
    python bench/conv_formulations.py --xla_flag_sets [--shapes res2,res4] [--only temporal]
        # each XLA flag set in a fresh process

Shapes are the I3D ResNet-50 NL's at 8 x 256 x 128 clips (res2 at 8x64x32, res3..res5 after the
temporal pool at 4x32x16, 4x16x8, 4x8x4). `train` times forward + gradients w.r.t. input and
kernel (what the train step pays: 3x the forward FLOPs); `forward` the forward alone. Each
number is the median of `--reps` calls after one warm-up; the machine is shared, so read the
columns of one run against each other rather than across runs.

Spatial `1 x k x k` formulations:
  conv2d_nhwc   2D conv with time folded into the batch (the model's Conv3D for k > 1)
  conv3d_ndhwc  the 3D conv primitive with a 1 x k x k kernel
  conv2d_nchw   2D conv with NCHW activations and OIHW kernel (transposes around it)
  im2col        k*k shifted slices concatenated on channels, then one matmul
  shifted_dots  sum of k*k channel matmuls over shifted slices
Temporal `k x 1 x 1` formulations (the bottleneck's first conv, C_in -> planes):
  shifted_dots  sum of k channel matmuls over time-shifted copies (the model's Conv3D)
  conv3d_ndhwc  the 3D conv primitive with a k x 1 x 1 kernel
  conv2d_t_hw   2D conv with a k x 1 kernel over (T, H*W)
  conv1d_bhw    1D conv over T with (B H W) folded into the batch (a transpose each way)
  im2col        k time-shifted copies concatenated on channels, then one matmul
  wide          one matmul by the k kernels side by side, its column blocks shifted in time and
                summed (`cpu_conv.pointwise_temporal_conv_wide`, the model's forward on CPUs)
Stem `5 x 7 x 7`, stride 1x2x2, 3 -> 64 channels:
  stacked_2d    the 5 time-shifted frames stacked on channels, one 7x7 2D conv of 15 channels
                (the model's Conv3D)
  conv3d_ndhwc  the 3D conv primitive
  sum_of_2d     5 2D convs of the time-shifted frames, summed
PyTorch columns: torch.nn.functional.conv3d (NCDHW, what a PyTorch I3D uses) and conv2d with
time folded into the batch, both on oneDNN, 2 threads.
"""

import argparse
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from timing import median_seconds

from reid_jax.models import cpu_conv

# (name, B*T frames per clip given T, T, H, W, C_in, C_out, k, stride)
SPATIAL_SHAPES = (
  ("res2 3x3", 8, 64, 32, 64, 64, 3, 1),
  ("res3 3x3", 4, 32, 16, 128, 128, 3, 1),
  ("res4 3x3", 4, 16, 8, 256, 256, 3, 1),
  ("res5 3x3", 4, 8, 4, 512, 512, 3, 1),
  ("res2 1x1 64->256", 8, 64, 32, 64, 256, 1, 1),
  ("res4 1x1 1024->256", 4, 16, 8, 1024, 256, 1, 1),
  ("stem 7x7/2 (2D baseline)", 8, 256, 128, 3, 64, 7, 2),
)
# (name, T, H, W, C_in, C_out, k)
TEMPORAL_SHAPES = (
  ("res2 3x1x1 256->64", 8, 64, 32, 256, 64, 3),
  ("res3 3x1x1 512->128", 4, 32, 16, 512, 128, 3),
  ("res4 3x1x1 1024->256", 4, 16, 8, 1024, 256, 3),
  ("res5 3x1x1 2048->512", 4, 8, 4, 2048, 512, 3),
)
# (name, T, H, W, C_in, C_out, k_t, k, stride)
STEM_SHAPES = (("stem 5x7x7/2 3->64", 8, 256, 128, 3, 64, 5, 7, 2),)

# XLA CPU flag sets tried by --xla_flag_sets (jaxlib 0.10.2; names from its flag table).
XLA_FLAG_SETS = {
  "default": "",
  "onednn": "--xla_cpu_use_onednn=true",
  "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
  "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
  "xnnpack": "--xla_cpu_use_xnnpack=true",
  "xnn_fusion_dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
  "ynn_fusion": "--xla_cpu_experimental_ynn_fusion_type=dot,individual_convolution",
  "eigen_convolutions": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
  "fast_math": "--xla_cpu_enable_fast_math=true",
  "no_thunks": "--xla_cpu_use_thunk_runtime=false",
  "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
}


def _same_pad(k):
  return ((k // 2, k // 2),) * 2


def spatial_formulations(k, stride):
  """name -> f(x [B, T, H, W, C], w [k, k, C, D]) -> [B, T, H', W', D]."""
  pad = _same_pad(k)

  def conv2d_nhwc(x, w):
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
      x.reshape(b * t, *x.shape[2:]),
      w,
      (stride, stride),
      pad,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(b, t, *y.shape[1:])

  def conv3d_ndhwc(x, w):
    return jax.lax.conv_general_dilated(
      x,
      w[None],
      (1, stride, stride),
      ((0, 0),) + pad,
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )

  def conv2d_nchw(x, w):
    b, t = x.shape[:2]
    frames = x.reshape(b * t, *x.shape[2:]).transpose(0, 3, 1, 2)
    y = jax.lax.conv_general_dilated(
      frames,
      w.transpose(3, 2, 0, 1),
      (stride, stride),
      pad,
      dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return y.transpose(0, 2, 3, 1).reshape(b, t, y.shape[2], y.shape[3], -1)

  def _taps(x):
    b, t, h, w_, c = x.shape
    p = k // 2
    padded = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)))
    ho, wo = (h + 2 * p - k) // stride + 1, (w_ + 2 * p - k) // stride + 1
    return [
      padded[:, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
      for i in range(k)
      for j in range(k)
    ]

  def im2col(x, w):
    patches = jnp.concatenate(_taps(x), axis=-1)
    return jnp.einsum("bthwc,cd->bthwd", patches, w.reshape(-1, w.shape[-1]))

  def shifted_dots(x, w):
    return sum(
      jnp.einsum("bthwc,cd->bthwd", tap, w[i // k, i % k]) for i, tap in enumerate(_taps(x))
    )

  forms = dict(conv2d_nhwc=conv2d_nhwc, conv3d_ndhwc=conv3d_ndhwc, conv2d_nchw=conv2d_nchw)
  if k > 1:
    forms.update(im2col=im2col, shifted_dots=shifted_dots)
  else:
    forms.update(
      matmul=lambda x, w: jnp.einsum("bthwc,cd->bthwd", x[:, :, ::stride, ::stride], w[0, 0])
    )
  return forms


def temporal_formulations(k):
  """name -> f(x [B, T, H, W, C], w [k, C, D]) -> [B, T, H, W, D]."""
  p = k // 2

  def shifted_dots(x, w):
    t = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    return sum(jnp.einsum("bthwc,cd->bthwd", padded[:, i : i + t], w[i]) for i in range(k))

  def conv3d_ndhwc(x, w):
    return jax.lax.conv_general_dilated(
      x,
      w[:, None, None],
      (1, 1, 1),
      ((p, p), (0, 0), (0, 0)),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )

  def conv2d_t_hw(x, w):
    b, t, h, w_, c = x.shape
    y = jax.lax.conv_general_dilated(
      x.reshape(b, t, h * w_, c),
      w[:, None],
      (1, 1),
      ((p, p), (0, 0)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y.reshape(x.shape[:4] + (-1,))

  def conv1d_bhw(x, w):
    b, t, h, w_, c = x.shape
    seq = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w_, t, c)
    y = jax.lax.conv_general_dilated(
      seq, w, (1,), ((p, p),), dimension_numbers=("NWC", "WIO", "NWC")
    )
    return y.reshape(b, h, w_, t, -1).transpose(0, 3, 1, 2, 4)

  def im2col(x, w):
    t = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate([padded[:, i : i + t] for i in range(k)], axis=-1)
    return jnp.einsum("bthwc,cd->bthwd", stacked, w.reshape(-1, w.shape[-1]))

  return dict(
    shifted_dots=shifted_dots,
    conv3d_ndhwc=conv3d_ndhwc,
    conv2d_t_hw=conv2d_t_hw,
    conv1d_bhw=conv1d_bhw,
    im2col=im2col,
    wide=cpu_conv.pointwise_temporal_conv_wide,
  )


def stem_formulations(k_t, k, stride):
  """name -> f(x [B, T, H, W, C], w [k_t, k, k, C, D]) -> [B, T, H', W', D]."""
  p_t, p = k_t // 2, ((k // 2, k // 2),) * 2
  conv2d = spatial_formulations(k, stride)["conv2d_nhwc"]

  def shifted(x):
    t = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (p_t, p_t), (0, 0), (0, 0), (0, 0)))
    return [padded[:, i : i + t] for i in range(k_t)]

  def stacked_2d(x, w):
    kernel = w.transpose(1, 2, 0, 3, 4).reshape(k, k, -1, w.shape[-1])
    return conv2d(jnp.concatenate(shifted(x), axis=-1), kernel)

  def conv3d_ndhwc(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (1, stride, stride), ((p_t, p_t),) + p, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )

  def sum_of_2d(x, w):
    return sum(conv2d(tap, w[i]) for i, tap in enumerate(shifted(x)))

  return dict(stacked_2d=stacked_2d, conv3d_ndhwc=conv3d_ndhwc, sum_of_2d=sum_of_2d)


def jax_runner(f, x, w, train):
  if train:

    def loss(x, w):
      return jnp.sum(f(x, w) * 1e-3)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  else:
    step = jax.jit(f)
  return lambda: jax.block_until_ready(step(x, w))


def torch_runner(f, x, w, train):
  if train:
    x, w = x.requires_grad_(), w.requires_grad_()

    def run():
      x.grad = w.grad = None
      (f(x, w).sum() * 1e-3).backward()
  else:

    def run():
      with torch.no_grad():
        f(x, w)

  return run


def check_close(forms, x, w):
  """Every formulation's output against the first one's (float32 tolerance)."""
  ref = None
  for name, f in forms.items():
    y = np.asarray(jax.jit(f)(x, w))
    if ref is None:
      ref = y
    elif not np.allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()):
      raise AssertionError(f"{name} differs from the reference formulation")


def jax_row(forms, x, w, flops, args) -> dict:
  """GFLOP/s of every JAX formulation in `forms`, once they are checked to agree."""
  x, w = jnp.asarray(x), jnp.asarray(w)
  check_close(forms, x, w)
  return {
    name: flops / median_seconds(jax_runner(f, x, w, args.pass_ == "train"), args.reps) / 1e9
    for name, f in forms.items()
  }


def torch_gflops(f, a, b, flops, args) -> float:
  """GFLOP/s of the PyTorch function `f(a, b)` in the pass `args` asks for."""
  return flops / median_seconds(torch_runner(f, a, b, args.pass_ == "train"), args.reps) / 1e9


def bench_spatial(args, rng):
  rows = []
  for name, t, h, w_, cin, cout, k, stride in selected(SPATIAL_SHAPES, args.shapes):
    x = rng.standard_normal((args.batch, t, h, w_, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.05
    ho, wo = (h - 1) // stride + 1, (w_ - 1) // stride + 1
    flops = 2 * args.batch * t * ho * wo * cin * cout * k * k * (3 if args.pass_ == "train" else 1)
    forms = spatial_formulations(k, stride)
    if cin < 8:  # 3-channel stem: the 3D primitive and the shifted matmuls run at ~0.1 GFLOP/s
      forms = {n: f for n, f in forms.items() if n not in ("conv3d_ndhwc", "shifted_dots")}
    row = jax_row(forms, x, w, flops, args)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()  # NCDHW
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()  # OIHW
    pad = k // 2
    row["torch_conv3d"] = torch_gflops(
      lambda a, b: torch.nn.functional.conv3d(
        a, b[:, :, None], stride=(1, stride, stride), padding=(0, pad, pad)
      ),
      xt.clone(),
      wt.clone(),
      flops,
      args,
    )
    frames = torch.from_numpy(x.reshape(-1, h, w_, cin)).permute(0, 3, 1, 2).contiguous()
    row["torch_conv2d"] = torch_gflops(
      lambda a, b: torch.nn.functional.conv2d(a, b, stride=stride, padding=pad),
      frames,
      wt.clone(),
      flops,
      args,
    )
    rows.append((name, row))
    print_row(name, row, flush=True)
  return rows


def bench_temporal(args, rng):
  rows = []
  for name, t, h, w_, cin, cout, k in selected(TEMPORAL_SHAPES, args.shapes):
    x = rng.standard_normal((args.batch, t, h, w_, cin), np.float32)
    w = rng.standard_normal((k, cin, cout), np.float32) * 0.05
    flops = 2 * args.batch * t * h * w_ * cin * cout * k * (3 if args.pass_ == "train" else 1)
    forms = temporal_formulations(k)
    row = jax_row(forms, x, w, flops, args)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
    wt = torch.from_numpy(w).permute(2, 1, 0).contiguous()[..., None, None]  # O I k 1 1
    row["torch_conv3d"] = torch_gflops(
      lambda a, b: torch.nn.functional.conv3d(a, b, padding=(k // 2, 0, 0)), xt, wt, flops, args
    )
    rows.append((name, row))
    print_row(name, row, flush=True)
  return rows


def bench_stem(args, rng):
  rows = []
  for name, t, h, w_, cin, cout, k_t, k, stride in selected(STEM_SHAPES, args.shapes):
    x = rng.standard_normal((args.batch, t, h, w_, cin), np.float32)
    w = rng.standard_normal((k_t, k, k, cin, cout), np.float32) * 0.05
    ho, wo = (h - 1) // stride + 1, (w_ - 1) // stride + 1
    flops = (
      2 * args.batch * t * ho * wo * cin * cout * k_t * k * k * (3 if args.pass_ == "train" else 1)
    )
    forms = stem_formulations(k_t, k, stride)
    row = jax_row(forms, x, w, flops, args)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
    wt = torch.from_numpy(w).permute(4, 3, 0, 1, 2).contiguous()  # O I t h w
    row["torch_conv3d"] = torch_gflops(
      lambda a, b: torch.nn.functional.conv3d(
        a, b, stride=(1, stride, stride), padding=(k_t // 2, k // 2, k // 2)
      ),
      xt,
      wt,
      flops,
      args,
    )
    rows.append((name, row))
    print_row(name, row, flush=True)
  return rows


def selected(shapes, prefixes):
  return [s for s in shapes if not prefixes or s[0].startswith(tuple(prefixes.split(",")))]


def print_row(name, row, flush=False):
  print(f"  {name:<20}" + "".join(f"{k}={v:6.1f}  " for k, v in row.items()), flush=flush)


def run_flag_sets(argv):
  """Re-runs this script once per XLA flag set and prints the GFLOP/s of every set."""
  for label, flags in XLA_FLAG_SETS.items():
    env = dict(os.environ, XLA_FLAGS=flags)
    print(f"== XLA_FLAGS={flags!r} ({label})", flush=True)
    result = subprocess.run(
      [sys.executable, __file__, *argv], env=env, capture_output=True, text=True
    )
    print("\n".join(line for line in result.stdout.splitlines() if line.startswith("  ")))
    if result.returncode:
      print(f"  failed: {result.stderr.strip().splitlines()[-1]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--pass", dest="pass_", choices=("train", "forward"), default="train")
  parser.add_argument("--only", choices=("spatial", "temporal", "stem", "all"), default="all")
  parser.add_argument(
    "--shapes", default="", help="comma list of row-name prefixes, e.g. res2,res4"
  )
  parser.add_argument("--xla_flag_sets", action="store_true")
  args, _ = parser.parse_known_args()
  if args.xla_flag_sets:
    run_flag_sets([a for a in sys.argv[1:] if a != "--xla_flag_sets"])
    return
  torch.set_num_threads(2)
  print(
    f"{args.pass_} pass, batch {args.batch}, GFLOP/s (median of {args.reps}); "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load {os.getloadavg()[0]:.1f}"
  )
  rng = np.random.default_rng(0)
  if args.only in ("spatial", "all"):
    print("spatial 1 x k x k:")
    bench_spatial(args, rng)
  if args.only in ("temporal", "all"):
    print("temporal k x 1 x 1:")
    bench_temporal(args, rng)
  if args.only in ("stem", "all"):
    print("stem k_t x k x k:")
    bench_stem(args, rng)


if __name__ == "__main__":
  main()
