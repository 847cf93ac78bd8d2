"""Building blocks shared by every variant: separable convolutions on clips and BatchNorm.

Activations are kept as clips `[B, T, H, W, C]` throughout the network. A temporally separable
inflated convolution is a temporal `k_t x 1 x 1` convolution followed by a spatial `1 x k x k`
one (paper Fig. 3d); neither needs a 3D convolution primitive:

- the spatial convolution is a 2D convolution over frames, with time folded into the batch
  (`b t h w c -> (b t) h w c`, a free reshape). XLA's 2D convolutions are far faster than its
  3D ones on CPU and use the same cuDNN/TPU kernels as image models elsewhere;
- the temporal convolution is a sum of `k_t` channel matmuls over time-shifted copies of the
  clip. It is a dense matmul on every backend and never transposes the activations.
  On the stem's 3 colour channels, where a matmul would be all overhead, it is `k_t * 3`
  broadcast multiply-adds instead (`few_channel_temporal_conv`).
"""

from __future__ import annotations

import functools
import itertools
import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx

# torchvision's BatchNorm defaults: eps 1e-5, running-average momentum 0.1 (Flax's 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# Kaiming normal (fan_out, ReLU gain), torchvision's initialiser for ResNet convolutions.
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


class SpatialConv(nnx.Module):
  """A `1 x k x k` convolution of a clip: a 2D convolution applied to every frame."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    pad = kernel_size // 2
    self.conv = nnx.Conv(
        in_features, out_features, (kernel_size, kernel_size), strides=(stride, stride),
        padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=conv_kernel_init, rngs=rngs)

  def __call__(self, x):  # [B, T, H, W, C]
    conv = self.conv
    if conv.kernel_size == (1, 1):
      # A 1x1 convolution is a channel matmul; XLA runs it as one faster than as a convolution
      # on CPUs (bench/conv_formulations.py), and these are about half the network's FLOPs.
      stride, dtype = conv.strides[0], conv.dtype or x.dtype
      x = x[:, :, ::stride, ::stride].astype(dtype)
      return jnp.einsum("bthwc,cd->bthwd", x, conv.kernel[0, 0].astype(dtype))
    frames = einops.rearrange(x, "b t h w c -> (b t) h w c")
    y = conv(frames)
    return einops.rearrange(y, "(b t) h w c -> b t h w c", b=x.shape[0])


class TemporalConv(nnx.Module):
  """A `k_t x 1 x 1` convolution over time, `C -> C`, zero-padded so T is kept.

  Its kernel `[k_t, C, C]` starts as the identity split over the taps (`I / k_t`, the paper's
  inflation rule), so a fresh or freshly inflated network maps a static clip as the 2D network
  maps its frame, away from the temporal borders.
  """

  def __init__(self, features: int, kernel_size: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    del rngs  # deterministic initialisation
    if kernel_size % 2 != 1:
      raise ValueError(f"temporal kernel size must be odd, got {kernel_size}")
    self.kernel_size = kernel_size
    self.dtype = dtype
    self.kernel = nnx.Param(temporal_identity_kernel(kernel_size, features, "mean", param_dtype))

  def __call__(self, x):  # [B, T, H, W, C]
    kernel = self.kernel[...].astype(self.dtype)
    x = x.astype(self.dtype)
    if x.shape[-1] <= FEW_CHANNELS:
      return few_channel_temporal_conv(x, kernel)
    t, pad = x.shape[1], self.kernel_size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)))
    return sum(jnp.einsum("bthwc,cd->bthwd", padded[:, tap:tap + t], kernel[tap])
               for tap in range(self.kernel_size))


# At or below this many channels (the stem's 3 colour channels) a temporal conv is computed as
# broadcast multiply-adds, not matmuls: a matmul whose minor dimension is 3 wastes almost all
# of a vector unit.
FEW_CHANNELS = 4


def _temporal_conv_2d(x, kernel):
  """The temporal conv as a 2D conv over `(T, H*W)` with a `k_t x 1` window."""
  b, t, h, w, c = x.shape
  pad = kernel.shape[0] // 2
  y = jax.lax.conv_general_dilated(
      x.reshape(b, t, h * w, c), kernel[:, None], (1, 1), ((pad, pad), (0, 0)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=jnp.float32)
  return y.reshape(b, t, h, w, kernel.shape[-1]).astype(x.dtype)


@jax.custom_vjp
def few_channel_temporal_conv(x, kernel):
  """`k_t x 1 x 1` conv of a clip with few channels (`[B, T, H, W, C] x [k_t, C, D]`).

  The forward pass and the input gradient are `k_t * C` broadcast multiply-adds each, which XLA
  fuses into one loop over the clip; the kernel gradient is that of the same conv written as a
  2D convolution (`_temporal_conv_2d`), a dense reduction. Matmuls or convolutions whose minor
  dimension is 3 run at well under 1 GFLOP/s on CPUs (bench/README.md).
  """
  t, pad = x.shape[1], kernel.shape[0] // 2
  padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0))).astype(jnp.float32)
  w = kernel.astype(jnp.float32)
  out = sum(padded[:, tap:tap + t, ..., c:c + 1] * w[tap, c]
            for tap in range(kernel.shape[0]) for c in range(kernel.shape[1]))
  return out.astype(x.dtype)


def _few_channel_fwd(x, kernel):
  return few_channel_temporal_conv(x, kernel), (x, kernel)


def _few_channel_bwd(residuals, dy):
  x, kernel = residuals
  # The input gradient is the same conv of dy with the taps reversed and transposed.
  dx = few_channel_temporal_conv(dy, jnp.swapaxes(kernel[::-1], 1, 2))
  _, kernel_vjp = jax.vjp(lambda k: _temporal_conv_2d(x, k), kernel)
  return dx.astype(x.dtype), kernel_vjp(dy)[0]


few_channel_temporal_conv.defvjp(_few_channel_fwd, _few_channel_bwd)


def temporal_identity_kernel(kernel_size: int, features: int, rule: str, dtype=jnp.float32):
  """`[k_t, C, C]` kernel whose taps compose to the identity on a static clip.

  `mean`: every tap is `I / k_t` (the paper's "each plane = 2D weight / t").
  `center`: the centre tap is `I`, the others 0 (exact at the temporal borders too).
  """
  eye = jnp.eye(features, dtype=dtype)
  if rule == "mean":
    return jnp.broadcast_to(eye / kernel_size, (kernel_size, features, features)).astype(dtype)
  if rule == "center":
    return jnp.zeros((kernel_size, features, features), dtype).at[kernel_size // 2].set(eye)
  raise ValueError(f"temporal_init must be 'mean' or 'center', got {rule!r}")


def max_pool(x, window: tuple[int, int, int], strides: tuple[int, int, int],
             padding: tuple[tuple[int, int], ...] = ((0, 0),) * 3):
  """Max-pool of a clip `[B, T, H, W, C]` over (T, H, W), padded with -inf.

  Computed as the elementwise maximum of the window's strided slices: the same values as
  `reduce_window`, and a gradient of selects and pads that XLA fuses, where `reduce_window`'s
  gradient (select-and-scatter) expands on CPUs into index arrays and a scatter as large as the
  input (forward + gradient 4x slower for the stem's pool, 10x for the temporal pool;
  bench/README.md). On ties the gradient is
  shared between the tied inputs rather than given to the first; in the network ties are ReLU
  zeros, whose gradient is zero either way.
  """
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out = [(x.shape[1 + a] - window[a]) // strides[a] + 1 for a in range(3)]
  if min(out) < 1:
    raise ValueError(f"max-pool window {window} is larger than the padded clip {x.shape[1:4]}")
  taps = []
  for offset in itertools.product(*(range(k) for k in window)):
    start = (0, *offset, 0)
    limit = (x.shape[0], *(o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides)),
             x.shape[-1])
    taps.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
  return functools.reduce(jnp.maximum, taps)


def max_pool_spatial(x, window: int, stride: int):
  """`1 x k x k` max-pool with torchvision's padding (k // 2, padded with -inf)."""
  pad = window // 2
  return max_pool(x, (1, window, window), (1, stride, stride), ((0, 0), (pad, pad), (pad, pad)))


def max_pool_temporal(x, window: int = 2):
  """`k x 1 x 1` max-pool with stride k: halves T after res2 as in the I3D ResNet-50."""
  if x.shape[1] % window:
    raise ValueError(f"temporal pooling by {window} needs T divisible by {window}, got T={x.shape[1]}")
  return max_pool(x, (window, 1, 1), (window, 1, 1))


def max_pool_spatial_valid(x):
  """`1 x 2 x 2` max-pool, stride 1x2x2, no padding: the non-local block's optional phi/g pooling."""
  return max_pool(x, (1, 2, 2), (1, 2, 2))


def fan_in_normal(std_scale: float = 1.0):
  """He-normal over fan-in, used by the non-local block's projections (its paper's ref. [13])."""
  return nnx.initializers.variance_scaling(2.0 * std_scale, "fan_in", "normal")


def num_params(module: nnx.Module) -> int:
  """Number of trainable scalars (nnx.Param leaves; BatchNorm running stats excluded)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))
