"""The convolutions of `layers.Conv3D` with kernel gradients computed as tap-wise matmuls on CPUs.

XLA CPU differentiates a convolution into convolutions: the kernel gradient of a `k x k` conv
is a convolution of the input by the output gradient (with `rhs_dilation` for a strided conv),
which it runs at a fraction of its forward speed, and the kernel gradient of a channel matmul
(the `k_t x 1 x 1` convs) is a matmul contracting the positions, for which it writes one
operand transposed (bench/README.md). Here each convolution is a `jax.custom_vjp` whose forward
is the same computation as before (the same values), and whose backward computes the kernel
gradient as a sum over the kernel's taps of

    dW[tap] = X_tap^T @ dY     X_tap: [positions, C_in], dY: [positions, C_out]

(`X_tap` the input positions that tap reads, a strided slice for a strided conv), each a dense
matmul; the input gradient stays what JAX's autodiff gives (XLA's transposed convolution, or the
transposed matmuls). The choice is made when the program is lowered (`lax.platform_dependent`):
on CPUs the tap-wise kernel gradient, elsewhere (GPUs, TPUs, an export for them) the backward
is JAX's own, so those backends run XLA's convolutions exactly as without this module.

`conv_grads="xla"` in the model (`Architecture.conv_grads`) leaves the custom VJPs out
altogether, which is how the two are compared (bench/README.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# "auto": tap-wise kernel gradients on CPUs where they are faster, XLA's elsewhere; "xla": XLA's
# everywhere.
CONV_GRADS = ("auto", "xla")

# The narrowest input of a `k x k` conv whose tap-wise kernel gradient beats XLA's: each tap's
# strided slice copies rows of C_in floats, slow for the stem's 15 stacked channels.
MIN_TAPWISE_FRAME_CHANNELS = 64


def conv_pointwise(x, kernel, conv_grads: str):
  """The `k_t x 1 x 1` conv of `pointwise_temporal_conv`, with `conv_grads`' kernel gradient."""
  if conv_grads == "auto":
    return pointwise_temporal_conv_tapwise(x, kernel)
  return pointwise_temporal_conv(x, kernel)


def conv_frames(frames, kernel, stride: int, conv_grads: str):
  """The `k x k` conv of `frame_conv`, with `conv_grads`' kernel gradient.

  On CPUs the tap-wise kernel gradient is used for the strided convs (XLA computes theirs as a
  convolution with `rhs_dilation`, its slowest form) of at least `MIN_TAPWISE_FRAME_CHANNELS`
  input channels; for the unstrided ones and the stem XLA's convolution is as fast or faster
  (bench/README.md).
  """
  if conv_grads == "auto" and stride > 1 and kernel.shape[2] >= MIN_TAPWISE_FRAME_CHANNELS:
    return frame_conv_tapwise(frames, kernel, stride)
  return frame_conv(frames, kernel, stride)


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


def frame_conv(frames, kernel, stride: int):
  """`k x k` 'same' 2D conv of frames `[N, H, W, C]` by kernel `[k, k, C, D]`, spatial stride."""
  k_h, k_w = kernel.shape[:2]
  return lax.conv_general_dilated(
    frames,
    kernel,
    (stride, stride),
    ((k_h // 2, k_h // 2), (k_w // 2, k_w // 2)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def _matmul_tn(a, b):
  """`a^T @ b` for `a` `[..., M]`, `b` `[..., N]` contracting every leading axis, accumulated
  in float32 and returned in `a`'s dtype."""
  a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
  out = lax.dot_general(a2, b2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return out.astype(a.dtype)


# --- k_t x 1 x 1 -------------------------------------------------------------------------------


def _pointwise_kernel_grad_taps(x, dy, k_t: int):
  """`[k_t, C, D]`: for each tap, the positions' `x[t - k_t // 2 + tap]^T @ dy[t]`."""
  shifts = time_shifts(x, k_t) if k_t > 1 else [x]
  return jnp.stack([_matmul_tn(shifted, dy) for shifted in shifts])


def _pointwise_kernel_grad_xla(x, dy, kernel):
  return jax.vjp(lambda k: pointwise_temporal_conv(x, k), kernel)[1](dy)[0]


@jax.custom_vjp
def pointwise_temporal_conv_tapwise(x, kernel):
  """`pointwise_temporal_conv` whose kernel gradient on CPUs is `_pointwise_kernel_grad_taps`."""
  return pointwise_temporal_conv(x, kernel)


def _pointwise_fwd(x, kernel):
  return pointwise_temporal_conv(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, dy):
  x, kernel = residuals
  dx = jax.vjp(lambda x: pointwise_temporal_conv(x, kernel), x)[1](dy)[0]
  dkernel = lax.platform_dependent(
    x,
    dy,
    kernel,
    cpu=lambda x, dy, kernel: _pointwise_kernel_grad_taps(x, dy, kernel.shape[0]),
    default=_pointwise_kernel_grad_xla,
  )
  return dx, dkernel


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


def _frame_kernel_grad_xla(frames, dy, kernel, stride: int):
  return jax.vjp(lambda k: frame_conv(frames, k, stride), kernel)[1](dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def frame_conv_tapwise(frames, kernel, stride: int):
  """`frame_conv` whose kernel gradient on CPUs is `_frame_kernel_grad_taps`."""
  return frame_conv(frames, kernel, stride)


def _frame_fwd(frames, kernel, stride):
  return frame_conv(frames, kernel, stride), (frames, kernel)


def _frame_bwd(stride, residuals, dy):
  frames, kernel = residuals
  dframes = jax.vjp(lambda f: frame_conv(f, kernel, stride), frames)[1](dy)[0]
  dkernel = lax.platform_dependent(
    frames,
    dy,
    kernel,
    cpu=lambda f, dy, k: _frame_kernel_grad_taps(f, dy, *k.shape[:2], stride),
    default=functools.partial(_frame_kernel_grad_xla, stride=stride),
  )
  return dframes, dkernel


frame_conv_tapwise.defvjp(_frame_fwd, _frame_bwd)
