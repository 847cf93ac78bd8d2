"""Training losses: label-smoothed cross-entropy and batch-hard triplet loss.

Both compute in float32 whatever the input dtype, so bfloat16 compute only changes the network,
not the loss arithmetic. The triplet loss mines over the batch it is given; under `jax.jit` with
the batch sharded over devices that is the global batch, which is what the paper's P x K sampling
assumes (hard examples of one identity can sit on another device).
"""

import jax
import jax.numpy as jnp

from reid_jax import distances as distances_lib


def cross_entropy_label_smoothing(
  logits: jax.Array, labels: jax.Array, epsilon: float = 0.1
) -> jax.Array:
  """Softmax cross-entropy against smoothed one-hot targets, averaged over the batch.

  Targets are `(1 - epsilon) * onehot(labels) + epsilon / C` (Szegedy et al. 2016), the form the
  video re-id codebases use.

  Args:
      logits: `[B, C]` class scores, any float dtype.
      labels: `[B]` integer class indices in `[0, C)`.
      epsilon: smoothing mass spread uniformly over all C classes.

  Returns:
      Scalar float32 loss.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, C]
  targets = (1.0 - epsilon) * jax.nn.one_hot(labels, num_classes) + epsilon / num_classes
  return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def triplet_distances(features: jax.Array, metric: str) -> jax.Array:
  """`[B, B]` distances between the clips of a batch: Euclidean (with a floor, so the gradient
  stays finite at 0) or cosine."""
  if metric == "euclidean":
    return distances_lib.euclidean_distances(features, features)
  return distances_lib.pairwise_distances(features, features, metric)


def batch_hard_triplet_loss(
  features: jax.Array,
  labels: jax.Array,
  margin: float = 0.3,
  *,
  metric: str = "euclidean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Batch-hard triplet loss (Hermans et al. 2017) mined over the whole batch.

  For each anchor: d_pos = the largest distance to another clip of its identity, d_neg = the
  smallest distance to a clip of any other identity; the anchor's loss is
  `max(margin + d_pos - d_neg, 0)`.

  Edge cases, chosen so that P x K batches with a short identity still train:
  - An anchor whose identity has no other clip in the batch takes d_pos = 0, so it still pushes
    negatives beyond the margin: loss `max(margin - d_neg, 0)`.
  - An anchor with no negative (every clip has its label) has no triplet: it contributes nothing
    and is left out of the mean. If no anchor has a negative the loss is 0.

  Args:
      features: `[B, D]` embeddings, any float dtype (computed in float32).
      labels: `[B]` integer identities.
      margin: triplet margin.
      metric: distance, see `triplet_distances`.

  Returns:
      `(loss, aux)`: scalar float32 mean over anchors that have a negative; `aux` holds float32
      scalars `active_fraction` (share of those anchors with a non-zero loss), `mean_d_pos` and
      `mean_d_neg` (over the same anchors) for logging.
  """
  distances = triplet_distances(features, metric)  # [B, B]
  same_label = labels[:, None] == labels[None, :]  # [B, B]
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)
  positive = same_label & not_self
  negative = ~same_label

  # Masked entries become the neutral element of the reduction, so they are never selected.
  d_pos = jnp.max(jnp.where(positive, distances, 0.0), axis=1)  # [B]
  d_neg = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)  # [B]
  has_negative = jnp.any(negative, axis=1)  # [B]
  # Zero stands in for the missing negative so no inf or nan reaches the gradient.
  d_neg = jnp.where(has_negative, d_neg, 0.0)

  per_anchor = jnp.where(has_negative, jax.nn.relu(margin + d_pos - d_neg), 0.0)
  weight = has_negative.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weight), 1.0)

  def masked_mean(x: jax.Array) -> jax.Array:
    return jnp.sum(x * weight) / count

  loss = masked_mean(per_anchor)
  aux = {
    "active_fraction": masked_mean((per_anchor > 0).astype(jnp.float32)),
    "mean_d_pos": masked_mean(d_pos),
    "mean_d_neg": masked_mean(d_neg),
  }
  return loss, aux
