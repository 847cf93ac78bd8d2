"""The 3D spacetime non-local block, embedded-Gaussian form (paper Eq. 4-6, Fig. 5).

`y = softmax(theta(x) phi(x)^T) g(x)` over all T*H*W positions, `z = BN(W_z y) + x`.
theta, phi and g are 1x1x1 convolutions (channel matmuls) to `C * inner_ratio` channels. The
BatchNorm after W_z starts with scale 0, so a fresh block is exactly the identity and can be
dropped into a pretrained network without changing what it computes (paper section 4.2).

Two options make it the block of the Non-local Networks release (video-nonlocal-net, PySlowFast),
whose Kinetics weights the paper starts from, and both are on by default (`Architecture`):
`pool_phi_g` max-pools x by 1x2x2 (stride 1x2x2, no padding) before the phi and g convolutions,
so the keys and values cover a quarter of the positions; `scale_attention` multiplies the logits
by `d ** -0.5` (d = inner width). With both off it is the paper's Eq. 5 and Fig. 5 as printed.

The attention is scaled-dot-product attention with a single head; `attention_impl` chooses
how it runs: `einsum` (the plain form; needed to return the attention weights) or `xla` /
`cudnn` through `jax.nn.dot_product_attention` (flash attention on GPUs).
"""

from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from reid_jax.models import layers

ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


class NonLocalBlock(nnx.Module):
  """Embedded-Gaussian non-local block on clips `[B, T, H, W, C]`."""

  def __init__(
    self,
    features: int,
    *,
    inner_ratio: float = 0.5,
    scale_attention: bool = False,
    pool_phi_g: bool = False,
    attention_impl: str = "einsum",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
    inner = max(1, int(features * inner_ratio))
    self.inner_features = inner
    self.scale_attention = scale_attention
    self.pool_phi_g = pool_phi_g
    self.attention_impl = attention_impl
    self.dtype = dtype

    def projection(n_in, n_out):
      return nnx.Linear(
        n_in,
        n_out,
        use_bias=True,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=layers.fan_in_normal(),
        rngs=rngs,
      )

    self.theta = projection(features, inner)
    self.phi = projection(features, inner)
    self.g = projection(features, inner)
    self.w_z = projection(inner, features)
    self.bn = layers.batch_norm(
      features, dtype=dtype, param_dtype=param_dtype, rngs=rngs, zero_scale=True
    )

  def __call__(self, x, *, return_attention: bool = False):
    """x: `[B, T, H, W, C]`. Returns z (same shape), and with `return_attention` also a dict
    `{'weights': [B, Nq, Nk], 'query_grid': (T, H, W), 'key_grid': (T, H', W')}`."""
    _, t, h, w, _ = x.shape
    theta = self.theta(x)
    if self.pool_phi_g and min(h, w) < 2:
      raise ValueError(
        f"non-local block on a {t}x{h}x{w} map: pooling phi and g by 1x2x2 needs "
        f"H and W >= 2 (larger clips, or nonlocal_pool=False)"
      )
    keys_in = layers.max_pool(x, (1, 2, 2), (1, 2, 2)) if self.pool_phi_g else x
    phi, g = self.phi(keys_in), self.g(keys_in)
    key_grid = phi.shape[1:4]
    q = einops.rearrange(theta, "b t h w d -> b (t h w) d")
    k = einops.rearrange(phi, "b t h w d -> b (t h w) d")
    v = einops.rearrange(g, "b t h w d -> b (t h w) d")
    scale = 1.0 / math.sqrt(self.inner_features) if self.scale_attention else 1.0

    weights = None
    if self.attention_impl == "einsum" or return_attention:
      logits = jnp.einsum("bqd,bkd->bqk", q, k, preferred_element_type=jnp.float32) * scale
      weights = jax.nn.softmax(logits, axis=-1)
      y = jnp.einsum("bqk,bkd->bqd", weights.astype(v.dtype), v)
    else:
      # [B, N, heads=1, D] layout of jax.nn.dot_product_attention.
      y = jax.nn.dot_product_attention(
        q[:, :, None, :],
        k[:, :, None, :],
        v[:, :, None, :],
        scale=scale,
        implementation=self.attention_impl,
      )[:, :, 0, :]
    y = einops.rearrange(y, "b (t h w) d -> b t h w d", t=t, h=h, w=w)
    z = self.bn(self.w_z(y)).astype(x.dtype) + x
    if return_attention:
      return z, {"weights": weights, "query_grid": (t, h, w), "key_grid": tuple(key_grid)}
    return z
