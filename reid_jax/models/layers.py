"""Building blocks shared by every variant: convolutions on clips, BatchNorm, max-pools.

Activations are kept as clips `[B, T, H, W, C]` throughout the network, and every convolution
is a `Conv3D` with a `[k_t, k_h, k_w, C_in, C_out]` kernel (Flax's 3D layout). None of them
runs XLA's 3D convolution primitive, which is slow on CPUs (bench/README.md); each kernel shape
of the I3D ResNet-50 has an exact formulation that is fast on every backend:

- `k_t x 1 x 1` (the bottleneck's first conv, `k_t` in {1, 3}; the 1x1 convs): a sum of `k_t`
  channel matmuls over time-shifted copies of the clip, with any spatial stride taken as a
  strided slice. Dense matmuls, no transposes.
- `k_t x k x k` with `k > 1` (the 3x3 convs with `k_t = 1`, the 5x7x7 stem): one 2D
  convolution over frames, time folded into the batch (`b t h w c -> (b t) h w c`, a free
  reshape). For `k_t > 1` the `k_t` time-shifted frames are stacked on the channel axis first,
  so the stem's 5x7x7 conv of 3 colour channels is one 7x7 conv of 15 channels: the same sum
  of products, in an order XLA and cuDNN run at 2D-convolution speed.

Time is zero-padded by `k_t // 2` on both sides, as in every public I3D. On CPUs the kernel
gradients of both forms are computed as tap-wise matmuls (`cpu_conv`, `conv_grads="auto"`).
"""

from __future__ import annotations

import functools
import itertools
import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.models import cpu_conv

# torchvision's BatchNorm defaults: eps 1e-5, running-average momentum 0.1 (Flax's 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# Kaiming normal (fan_out, ReLU gain), torchvision's initialiser for ResNet convolutions; for a
# `[k_t, k_h, k_w, in, out]` kernel the fan-out is `out * k_t * k_h * k_w`, as in PyTorch.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(num_features: int, *, dtype, param_dtype, rngs: nnx.Rngs, zero_scale: bool = False):
  """BatchNorm over every axis but the last, with torchvision's epsilon and momentum."""
  return nnx.BatchNorm(
    num_features,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
    param_dtype=param_dtype,
    scale_init=nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init(),
    rngs=rngs,
  )


class Conv3D(nnx.Module):
  """A `k_t x k_h x k_w` convolution of a clip, no bias, spatial stride only, 'same' padding.

  The kernel is `[k_t, k_h, k_w, C_in, C_out]`; padding is `k // 2` on every axis (PyTorch's
  `padding=k // 2`), so T is kept and H, W shrink by the stride. `conv_grads`
  (`cpu_conv.CONV_GRADS`) chooses how the gradients are computed; the forward computes the same
  sums (on CPUs `"auto"`'s `k_t x 1 x 1` forward is one wider matmul, which may round otherwise).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: tuple[int, int, int],
    *,
    stride: int = 1,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    conv_grads: str = "auto",
    rngs: nnx.Rngs,
  ):
    k_t, k_h, k_w = kernel_size
    if conv_grads not in cpu_conv.CONV_GRADS:
      raise ValueError(f"conv_grads must be one of {cpu_conv.CONV_GRADS}, got {conv_grads!r}")
    if k_t % 2 != 1 or k_h % 2 != 1 or k_w % 2 != 1:
      raise ValueError(f"kernel sizes must be odd, got {kernel_size}")
    self.kernel_size = tuple(kernel_size)
    self.stride = stride
    self.dtype = dtype
    self.conv_grads = conv_grads
    self.kernel = nnx.Param(
      conv_kernel_init(rngs.params(), (*kernel_size, in_features, out_features), param_dtype)
    )

  def __call__(self, x):  # [B, T, H, W, C_in] -> [B, T, H', W', C_out]
    x = x.astype(self.dtype)
    kernel = self.kernel[...].astype(self.dtype)
    k_t, k_h, k_w = self.kernel_size
    if k_h == k_w == 1:
      x = x[:, :, :: self.stride, :: self.stride]
      return cpu_conv.conv_pointwise(x, kernel[:, 0, 0], self.conv_grads)
    if k_t > 1:
      x = _stack_time_shifts(x, k_t)
      kernel = einops.rearrange(kernel, "t h w i o -> h w (t i) o")
    else:
      kernel = kernel[0]
    frames = einops.rearrange(x, "b t h w c -> (b t) h w c")
    y = cpu_conv.conv_frames(frames, kernel, self.stride, self.conv_grads)
    return einops.rearrange(y, "(b t) h w c -> b t h w c", b=x.shape[0])


def _stack_time_shifts(x, k_t: int):
  """`[B, T, H, W, C] -> [B, T, H, W, k_t * C]`, channels ordered (tap, channel)."""
  return jnp.concatenate(cpu_conv.time_shifts(x, k_t), axis=-1)


def max_pool(
  x,
  window: tuple[int, int, int],
  strides: tuple[int, int, int],
  padding: tuple[tuple[int, int], ...] = ((0, 0),) * 3,
):
  """Max-pool of a clip `[B, T, H, W, C]` over (T, H, W), padded with -inf, floor mode.

  Computed as the elementwise maximum of the window's strided slices: the same values as
  `reduce_window`. Its gradient (`_window_max`) goes, as `reduce_window`'s and PyTorch's do, to
  the first of a window's inputs that hold its maximum, and is assembled without a scatter: each
  input position receives the output gradients of the few windows whose maximum it is, in one
  fused loop. XLA's own forms were slow on CPUs: `reduce_window`'s gradient (select-and-scatter)
  expands into index arrays and a scatter as large as the input (forward + gradient 4x slower for
  the stem's pool, 10x for the temporal pool), and autodiff of the slices' maximum recomputes
  every window's maximum for each of its taps (bench/README.md).
  """
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out = [(x.shape[1 + a] - window[a]) // strides[a] + 1 for a in range(3)]
  if min(out) < 1:
    raise ValueError(f"max-pool window {window} is larger than the padded clip {x.shape[1:4]}")
  return _window_max(x, tuple(window), tuple(strides), x.shape)


def _window_taps(x, window, strides):
  """The strided slice of `x` that each tap of the window reads, taps in row-major order."""
  out = [(x.shape[1 + a] - window[a]) // strides[a] + 1 for a in range(3)]
  taps = []
  for offset in itertools.product(*(range(k) for k in window)):
    start = (0, *offset, 0)
    limit = (
      x.shape[0],
      *(o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides)),
      x.shape[-1],
    )
    taps.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
  return taps


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _window_max(x, window, strides, shape):
  """The maximum of each (unpadded, floor-mode) window of `x` `[B, T, H, W, C]` (of `shape`)."""
  return functools.reduce(jnp.maximum, _window_taps(x, window, strides))


def _window_max_fwd(x, window, strides, shape):
  taps = _window_taps(x, window, strides)
  y = functools.reduce(jnp.maximum, taps)
  # The first tap that holds the maximum.
  index = jnp.int8 if len(taps) <= 127 else jnp.int32
  if all(w <= s for w, s in zip(window, strides)):
    # Disjoint windows: the backward reads each window once, so XLA may fuse this into it.
    first = jnp.full(y.shape, len(taps) - 1, index)
    for tap in reversed(range(len(taps) - 1)):
      first = jnp.where(taps[tap] == y, index(tap), first)
  else:
    # Overlapping windows: as a reduction, which XLA computes once, rather than an elementwise
    # chain that it would fuse into the backward's loop and recompute for every window it reads.
    first = jnp.argmax(jnp.stack(taps), axis=0).astype(index)
  return y, first


def _window_max_bwd(window, strides, in_shape, first, dy):
  """Input position `q = o * s + d` (output `o`, tap offset `d`, per axis) receives `dy[o]` where
  tap `d` is window `o`'s first maximum. Per residue `r = q mod s` the inputs form a plane of the
  output grid, to which each tap with `d = r (mod s)` adds its masked `dy` shifted by
  `(d - r) // s`; the planes interleave into the input."""
  spatial = in_shape[1:4]
  lengths = [-(-n // s) for n, s in zip(spatial, strides)]  # plane length per axis
  offsets = list(itertools.product(*(range(k) for k in window)))
  planes = []
  for residue in itertools.product(*(range(s) for s in strides)):
    plane = jnp.zeros((in_shape[0], *lengths, in_shape[-1]), dy.dtype)
    for tap, offset in enumerate(offsets):
      if any(d % s != r for d, s, r in zip(offset, strides, residue)):
        continue
      shifts = [(d - r) // s for d, s, r in zip(offset, strides, residue)]
      masked = jnp.where(first == tap, dy, jnp.zeros((), dy.dtype))
      config = [(0, 0, 0)]
      config += [(u, n - u - m, 0) for u, n, m in zip(shifts, lengths, dy.shape[1:4])]
      plane = plane + jax.lax.pad(masked, jnp.zeros((), dy.dtype), [*config, (0, 0, 0)])
    planes.append(plane)
  grid = jnp.stack(planes).reshape(*strides, in_shape[0], *lengths, in_shape[-1])
  dx = einops.rearrange(grid, "st sh sw b t h w c -> b (t st) (h sh) (w sw) c")
  return (dx[:, : spatial[0], : spatial[1], : spatial[2]],)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool_spatial(x, window: int, stride: int, padding: int):
  """`1 x k x k` max-pool, stride `1 x s x s`, `padding` on both sides of H and W."""
  return max_pool(
    x, (1, window, window), (1, stride, stride), ((0, 0), (padding, padding), (padding, padding))
  )


def max_pool_temporal(x, window: int = 2):
  """`k x 1 x 1` max-pool with stride k: halves T after res2 as in the I3D ResNet-50."""
  if x.shape[1] % window:
    raise ValueError(
      f"temporal pooling by {window} needs T divisible by {window}, got T={x.shape[1]}"
    )
  return max_pool(x, (window, 1, 1), (window, 1, 1))


def fan_in_normal(std_scale: float = 1.0):
  """He-normal over fan-in, used by the non-local block's projections (its paper's ref. [13])."""
  return nnx.initializers.variance_scaling(2.0 * std_scale, "fan_in", "normal")


def num_params(module: nnx.Module) -> int:
  """Number of trainable scalars (nnx.Param leaves; BatchNorm running stats excluded)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
