"""The convolutions of `layers.Conv3D`, with gradients computed as tap-wise matmuls on CPUs.

XLA CPU differentiates a convolution into convolutions: the kernel gradient of a `k x k` conv
is a convolution of the input by the output gradient (with `rhs_dilation` for a strided conv,
its slowest form), and the kernel gradient of a channel matmul (the `k_t x 1 x 1` convs) is a
matmul contracting the positions, for which it writes one operand transposed (bench/README.md).
Here a convolution is a `jax.custom_vjp` whose forward is the computation `Conv3D` always ran
(the same values) and whose backward computes the kernel gradient as a sum over the taps of

    dW[tap] = X_tap^T @ dY     X_tap: [positions, C_in], dY: [positions, C_out]

each a dense matmul contracting the positions in place (row-major operands, no transposed copy):

- `k_t x 1 x 1`: `X_tap` is the whole input and `dY` the output gradient shifted in time by the
  tap (C_out channels: a quarter of the bottleneck's C_in, so shifting it is the cheap copy);
  the input gradient is one matmul of the `k_t` shifted output gradients stacked on channels.
- `k x k` over frames, strided: `X_tap` is the strided slice of the padded frames that the tap
  reads; the input gradient stays XLA's (its transposed convolution). Used only where it is
  faster than XLA's (`uses_tapwise_kernel_grad`): the unstrided 3x3 convs and the 15-channel
  stem run XLA's kernel-gradient convolution instead, on chunks of frames or of a frame's rows
  of at most `KERNEL_GRAD_CHUNK_BYTES` and summed, which XLA CPU runs up to 8x faster than on
  the whole batch.

The forward of a `k x k` conv is `frame_conv`'s, on CPUs on chunks of whole frames of at most
`FRAME_CHUNK_BYTES` (at the paper's batch 8: the stem and res3's strided 3x3): each output frame
is computed from its own input frame alone, so a chunk computes the same sums (their rounding may
differ where the kernel tiles a chunk otherwise than the batch).

Those forms of the `k x k` convs are for XLA CPU's YNNPACK convolutions, its default. Where the
process runs its convolutions on Eigen instead (`host_runtime.use_eigen_convolutions`, which
`reid_jax.main` applies), the forward and XLA's kernel gradient run on the whole batch, faster
than any chunks or taps there (bench/README.md).

The choice is made when the program is lowered (`lax.platform_dependent`): on CPUs the tap-wise
gradients, elsewhere (GPUs, TPUs, an export for them) JAX's own autodiff of the same forward, so
those backends run XLA's convolutions as without this module. `conv_grads="xla"`
(`Architecture.conv_grads`) leaves the custom VJPs out altogether.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from reid_jax import host_runtime

# "auto": tap-wise kernel gradients on CPUs where they are faster, XLA's elsewhere; "xla": XLA's
# everywhere.
CONV_GRADS = ("auto", "xla")

# The narrowest input of a strided `k x k` conv whose tap-wise kernel gradient beats XLA's: each
# tap's strided slice copies rows of C_in floats, slow for the stem's 15 stacked channels.
MIN_TAPWISE_FRAME_CHANNELS = 64
# Where the tap-wise kernel gradient is not used, XLA's kernel-gradient convolution runs on chunks
# whose input and output gradient take at most this many bytes: whole frames where they fit, else
# slabs of one frame's rows. XLA CPU runs it up to 8x faster on such chunks than on a whole batch
# (bench/README.md): a quarter of a frame of the stem, one frame of res2's 3x3, the whole batch of
# res5's 3x3 at batch 2.
KERNEL_GRAD_CHUNK_BYTES = 1024 * 1024
# ... except that chunks of fewer than MIN_CHUNK_FRAMES small frames run slower than their bytes
# say (the demo's stem at batch 32: 4 frames 84 ms, 8 frames 28, the whole batch 30; res4's 3x3 at
# batch 2: 4 frames 9.5 ms, 8 frames 7.3; bench/README.md), so chunks take MIN_CHUNK_FRAMES frames
# where those fit in twice the budget.
MIN_CHUNK_FRAMES = 8
# The forward of a `k x k` conv runs on CPUs on chunks of whole frames whose input and output take
# at most this many bytes. XLA CPU's convolution (YNNPACK) takes a scratch buffer of about half of
# them from the worker thread that runs it, and glibc maps a worker's block above 64 MiB (its
# thread heaps' size) afresh, faulting its pages in again at every step: at batch 8 the paper's
# stem (64 frames, 260 MB in and out) mapped 133 MB a step and took 744 ms of it, 4 x 118 ms in
# chunks of 16 frames (bench/README.md).
FRAME_CHUNK_BYTES = 64 * 1024 * 1024


def conv_pointwise(x, kernel, conv_grads: str):
  """The `k_t x 1 x 1` conv of `pointwise_temporal_conv`, with `conv_grads`' gradients."""
  if conv_grads == "auto":
    return pointwise_temporal_conv_tapwise(x, kernel)
  return pointwise_temporal_conv(x, kernel)


def conv_frames(frames, kernel, stride: int, conv_grads: str):
  """The `k x k` conv of `frame_conv`, with `conv_grads`' kernel gradient."""
  if conv_grads == "auto":
    return frame_conv_tapwise(frames, kernel, stride)
  return frame_conv(frames, kernel, stride)


def uses_tapwise_kernel_grad(kernel_shape, stride: int) -> bool:
  """Whether a `k x k` conv's kernel gradient on CPUs is tap-wise: for the strided convs (XLA
  computes theirs as a convolution with `rhs_dilation`, its slowest form) of at least
  `MIN_TAPWISE_FRAME_CHANNELS` input channels. The others (the unstrided convs, the stem) run
  XLA's kernel-gradient convolution on chunks (`kernel_grad_chunks`)."""
  return stride > 1 and kernel_shape[2] >= MIN_TAPWISE_FRAME_CHANNELS


def kernel_grad_chunks(frames_shape, dy_shape, itemsize: int) -> tuple[int, int]:
  """`(frames, output rows)` per chunk of XLA's kernel-gradient convolution: the most whole frames,
  a divisor of the batch's, that fit in `KERNEL_GRAD_CHUNK_BYTES` (input and output gradient), or
  in twice that if it lets a chunk hold `MIN_CHUNK_FRAMES`; else one frame's rows in as few equal
  slabs as fit (the last one shorter where they do not divide)."""
  n, h_out = dy_shape[0], dy_shape[1]
  per_frame = itemsize * (math.prod(frames_shape[1:]) + math.prod(dy_shape[1:]))
  if per_frame <= KERNEL_GRAD_CHUNK_BYTES:
    most = KERNEL_GRAD_CHUNK_BYTES // per_frame
    if most < MIN_CHUNK_FRAMES <= 2 * KERNEL_GRAD_CHUNK_BYTES // per_frame:
      most = MIN_CHUNK_FRAMES
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0), h_out
  return 1, -(-h_out // -(-per_frame // KERNEL_GRAD_CHUNK_BYTES))


def frame_chunks(frames_shape, out_shape, itemsize: int) -> int:
  """Frames per chunk of a `k x k` conv's forward on CPUs: the most, a divisor of the batch's,
  whose input and output fit in `FRAME_CHUNK_BYTES` (at least one)."""
  n = frames_shape[0]
  per_frame = itemsize * (math.prod(frames_shape[1:]) + math.prod(out_shape[1:]))
  most = max(1, FRAME_CHUNK_BYTES // per_frame)
  return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def time_shifts(x, k_t: int):
  """The `k_t` views `x[t - k_t // 2 + tap]` of a zero-padded clip `[B, T, ...]`, tap by tap."""
  t, pad = x.shape[1], k_t // 2
  padded = jnp.pad(x, ((0, 0), (pad, pad)) + ((0, 0),) * (x.ndim - 2))
  return [padded[:, tap : tap + t] for tap in range(k_t)]


def pointwise_temporal_conv(x, kernel):
  """`k_t x 1 x 1` conv as a sum of channel matmuls: x `[B, T, H, W, C]`, kernel `[k_t, C, D]`."""
  shifts = time_shifts(x, kernel.shape[0]) if kernel.shape[0] > 1 else [x]
  return sum(
    jnp.einsum("bthwc,cd->bthwd", shifted, kernel[tap]) for tap, shifted in enumerate(shifts)
  )


def frame_conv(frames, kernel, stride: int, padding: str | None = None):
  """`k x k` 2D conv of frames `[N, H, W, C]` by kernel `[k, k, C, D]`, spatial stride: by
  default padded by `k // 2` on every side ('same' for the odd kernels here); `"VALID"`:
  unpadded."""
  k_h, k_w = kernel.shape[:2]
  pads = ((k_h // 2, k_h // 2), (k_w // 2, k_w // 2)) if padding is None else padding
  return lax.conv_general_dilated(
    frames, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _matmul_tn(a, b):
  """`a^T @ b` for `a` `[..., M]`, `b` `[..., N]` contracting every leading axis, accumulated
  in float32 and returned in `a`'s dtype."""
  a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
  out = lax.dot_general(a2, b2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return out.astype(a.dtype)


# --- k_t x 1 x 1 -------------------------------------------------------------------------------


def _output_grad_shifts(dy, k_t: int):
  """`dy[t + k_t // 2 - tap]` (zero outside the clip) for each tap: the output gradient each
  input frame `t` receives through tap `tap`."""
  return time_shifts(dy, k_t)[::-1] if k_t > 1 else [dy]


def _pointwise_grads_taps(x, dy, kernel):
  """Input and kernel gradients of `pointwise_temporal_conv` from the output gradient shifted
  for each tap and stacked on channels (C_out each, a quarter of the bottleneck's C_in):
  `[dW_0 .. dW_k] = x^T @ [dy_0 .. dy_k]` over every position and
  `dx = [dy_0 .. dy_k] @ [W_0^T .. W_k^T]`, one matmul each."""
  k_t, c, d = kernel.shape
  shifts = _output_grad_shifts(dy, k_t)
  stacked = jnp.concatenate(shifts, axis=-1) if k_t > 1 else shifts[0]
  dkernel = jnp.swapaxes(_matmul_tn(x, stacked).reshape(c, k_t, d), 0, 1)
  dx = jnp.einsum("bthwk,kc->bthwc", stacked, jnp.swapaxes(kernel, 1, 2).reshape(-1, c))
  return dx, dkernel


def pointwise_temporal_conv_wide(x, kernel):
  """`pointwise_temporal_conv` as one matmul by the taps' kernels side by side,
  `Z = x @ [W_0 .. W_k]`, and the sum of each tap's `Z` columns shifted in time (the same
  products, summed in the same order)."""
  k_t, _, d = kernel.shape
  if k_t == 1:
    return pointwise_temporal_conv(x, kernel)
  wide = jnp.einsum("bthwc,cd->bthwd", x, jnp.concatenate(list(kernel), axis=-1))
  shifts = time_shifts(wide, k_t)
  return sum(shifted[..., tap * d : (tap + 1) * d] for tap, shifted in enumerate(shifts))


def _symbolic_shape(x) -> bool:
  """Whether `x` has a dimension of symbolic size (a batch-polymorphic export traces one)."""
  return not all(isinstance(d, int) for d in x.shape)


def _pointwise_forward(x, kernel):
  """`pointwise_temporal_conv`: on CPUs `pointwise_temporal_conv_wide`, whose wider matmul XLA
  CPU runs faster than the taps' (bench/README.md); elsewhere, and with no platform branch for
  a batch of symbolic size (a batch-polymorphic export), the taps' matmuls."""
  if kernel.shape[0] == 1 or _symbolic_shape(x):
    return pointwise_temporal_conv(x, kernel)
  return lax.platform_dependent(
    x, kernel, cpu=pointwise_temporal_conv_wide, default=pointwise_temporal_conv
  )


def _pointwise_grads_xla(x, dy, kernel):
  return jax.vjp(pointwise_temporal_conv, x, kernel)[1](dy)


@jax.custom_vjp
def pointwise_temporal_conv_tapwise(x, kernel):
  """`pointwise_temporal_conv` whose forward on CPUs is `pointwise_temporal_conv_wide` and whose
  gradients on CPUs are `_pointwise_grads_taps`."""
  return _pointwise_forward(x, kernel)


def _pointwise_fwd(x, kernel):
  return _pointwise_forward(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, dy):
  x, kernel = residuals
  return lax.platform_dependent(
    x, dy, kernel, cpu=_pointwise_grads_taps, default=_pointwise_grads_xla
  )


pointwise_temporal_conv_tapwise.defvjp(_pointwise_fwd, _pointwise_bwd)


# --- k x k over frames ---------------------------------------------------------------------------


def _frame_kernel_grad_taps(frames, dy, k_h: int, k_w: int, stride: int):
  """`[k_h, k_w, C, D]`: for each tap, the input positions it reads (a strided slice of the
  zero-padded frames) contracted with `dy` over frames and output positions."""
  n, h_out, w_out, _ = dy.shape
  c = frames.shape[-1]
  padded = jnp.pad(frames, ((0, 0), (k_h // 2, k_h // 2), (k_w // 2, k_w // 2), (0, 0)))
  rows = []
  for i in range(k_h):
    taps = []
    for j in range(k_w):
      tap = lax.slice(
        padded,
        (0, i, j, 0),
        (n, i + stride * (h_out - 1) + 1, j + stride * (w_out - 1) + 1, c),
        (1, stride, stride, 1),
      )
      taps.append(_matmul_tn(tap, dy))
    rows.append(jnp.stack(taps))
  return jnp.stack(rows)


def _frame_kernel_grad_xla(frames, dy, kernel, stride: int, padding: str | None = None):
  return jax.vjp(lambda k: frame_conv(frames, k, stride, padding), kernel)[1](dy)[0]


def _frame_kernel_grad_chunked(frames, dy, kernel, stride: int, chunk=None):
  """XLA's kernel gradient summed, in float32, over chunks of `chunk = (frames, output rows)`
  (default `kernel_grad_chunks`; the frames a divisor of the batch's): each the 'valid'
  convolution of the slab of zero-padded input rows its output rows read. The chunks are
  unrolled: as the steps of a `lax.scan` they made the train step 7x slower (bench/README.md)."""
  n, h_out = dy.shape[:2]
  per_frames, per_rows = chunk or kernel_grad_chunks(frames.shape, dy.shape, frames.dtype.itemsize)
  if n % per_frames:
    raise ValueError(f"chunks of {per_frames} frames do not divide {n} frames")
  if per_frames == n and per_rows >= h_out:
    return _frame_kernel_grad_xla(frames, dy, kernel, stride)
  k_h, k_w = kernel.shape[:2]
  padded = jnp.pad(frames, ((0, 0), (k_h // 2, k_h // 2), (k_w // 2, k_w // 2), (0, 0)))
  total = jnp.zeros(kernel.shape, jnp.float32)
  for i in range(0, n, per_frames):
    for r in range(0, h_out, per_rows):
      rows = min(per_rows, h_out - r)
      slab = padded[i : i + per_frames, stride * r : stride * (r + rows - 1) + k_h]
      out_grad = dy[i : i + per_frames, r : r + rows]
      grad = _frame_kernel_grad_xla(slab, out_grad, kernel, stride, "VALID")
      total = total + grad.astype(jnp.float32)
  return total.astype(kernel.dtype)


def _frame_forward(frames, kernel, stride: int):
  """`frame_conv`: on CPUs on chunks of `frame_chunks` frames (concatenated) where the batch's
  frames do not fit in `FRAME_CHUNK_BYTES`, whole elsewhere, whole for a batch of symbolic size
  (a batch-polymorphic export) and whole where the convolutions run on Eigen."""
  n, h, w = frames.shape[:3]
  if _symbolic_shape(frames) or not host_runtime.ynn_convolutions():
    return frame_conv(frames, kernel, stride)
  out_shape = (n, (h - 1) // stride + 1, (w - 1) // stride + 1, kernel.shape[3])
  per = frame_chunks(frames.shape, out_shape, frames.dtype.itemsize)
  if per == n:
    return frame_conv(frames, kernel, stride)

  def chunked(frames, kernel):
    chunks = [frame_conv(frames[i : i + per], kernel, stride) for i in range(0, n, per)]
    return jnp.concatenate(chunks)

  return lax.platform_dependent(
    frames, kernel, cpu=chunked, default=functools.partial(frame_conv, stride=stride)
  )


def _frame_kernel_grad_cpu(frames, dy, kernel, stride: int):
  if not host_runtime.ynn_convolutions():
    return _frame_kernel_grad_xla(frames, dy, kernel, stride)
  if uses_tapwise_kernel_grad(kernel.shape, stride):
    return _frame_kernel_grad_taps(frames, dy, *kernel.shape[:2], stride)
  return _frame_kernel_grad_chunked(frames, dy, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def frame_conv_tapwise(frames, kernel, stride: int):
  """`frame_conv` whose forward on CPUs runs on chunks of frames (`frame_chunks`) and whose
  kernel gradient on CPUs is `_frame_kernel_grad_cpu`."""
  return _frame_forward(frames, kernel, stride)


def _frame_fwd(frames, kernel, stride):
  return _frame_forward(frames, kernel, stride), (frames, kernel)


def _frame_bwd(stride, residuals, dy):
  frames, kernel = residuals
  dframes = jax.vjp(lambda f: frame_conv(f, kernel, stride), frames)[1](dy)[0]
  dkernel = lax.platform_dependent(
    frames,
    dy,
    kernel,
    cpu=functools.partial(_frame_kernel_grad_cpu, stride=stride),
    default=functools.partial(_frame_kernel_grad_xla, stride=stride),
  )
  return dframes, dkernel


frame_conv_tapwise.defvjp(_frame_fwd, _frame_bwd)
