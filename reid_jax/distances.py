"""Pairwise distances between feature sets: the one implementation that training (the triplet
loss), evaluation (ranking, re-ranking, calibration) and retrieval (`reid_jax.retrieval`) share."""

import functools

import jax
import jax.numpy as jnp

METRICS = ("euclidean", "cosine")
# Floor on norms and on squared distances before a square root (sqrt has an infinite derivative
# at 0, and an anchor with itself is at exactly 0). The PyTorch re-id codebases' constant.
_EPSILON = 1e-12


def check_metric(metric: str) -> None:
  """Raises ValueError unless `metric` is one of METRICS."""
  if metric not in METRICS:
    raise ValueError(f"{metric!r} is not one of {METRICS}")


def pairwise_distances(x: jax.Array, y: jax.Array, metric: str) -> jax.Array:
  """`[..., n, D] x [..., m, D] -> [..., n, m]` float32: squared Euclidean, or 1 - cos.

  Leading dimensions are batch dimensions (re-ranking compares each item with its own set).
  Squared Euclidean ranks as Euclidean does and is what k-reciprocal re-ranking is defined on;
  `euclidean_distances` is the metric itself.
  """
  check_metric(metric)
  # HIGHEST: on GPU/TPU the default matmul precision rounds inputs to bf16, which reorders
  # near neighbours, and |a|^2 + |b|^2 - 2ab cancels badly for near points.
  dot = functools.partial(jnp.einsum, "...nd,...md->...nm", precision=jax.lax.Precision.HIGHEST)
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  if metric == "euclidean":
    squared = jnp.sum(x * x, -1)[..., :, None] + jnp.sum(y * y, -1)[..., None, :] - 2.0 * dot(x, y)
    return jnp.maximum(squared, 0.0)
  unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), _EPSILON)
  return 1.0 - dot(unit(x), unit(y))


def euclidean_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """`sqrt(max(||a - b||^2, 1e-12))`: Euclidean distances whose gradient stays finite at 0."""
  return jnp.sqrt(jnp.maximum(pairwise_distances(x, y, "euclidean"), _EPSILON))
