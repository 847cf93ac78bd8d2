"""Losses against loop-by-loop numpy references written from the definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reid_jax import losses
from reid_jax.losses import triplet_distances

# Jitted once per shape: far fewer compilations than running the losses op by op.
cross_entropy_label_smoothing = jax.jit(losses.cross_entropy_label_smoothing)
batch_hard_triplet_loss = jax.jit(losses.batch_hard_triplet_loss, static_argnames="metric")


def _reference_cross_entropy(logits, labels, epsilon):
  logits = logits.astype(np.float64)
  num_classes = logits.shape[1]
  total = 0.0
  for row, label in zip(logits, labels):
    log_probs = row - row.max() - np.log(np.sum(np.exp(row - row.max())))
    target = np.full(num_classes, epsilon / num_classes)
    target[label] += 1.0 - epsilon
    total += -np.sum(target * log_probs)
  return total / len(labels)


def _reference_triplet(features, labels, margin, metric="euclidean"):
  """Per-anchor loops; returns (loss, active_fraction, mean_d_pos, mean_d_neg)."""
  features = features.astype(np.float64)
  losses, d_poss, d_negs = [], [], []
  for i in range(len(labels)):
    if metric == "euclidean":
      dist = np.sqrt(np.maximum(np.sum((features - features[i]) ** 2, axis=1), 1e-12))
    else:
      unit = features / np.linalg.norm(features, axis=1, keepdims=True)
      dist = 1.0 - unit @ unit[i]
    positives = [dist[j] for j in range(len(labels)) if labels[j] == labels[i] and j != i]
    negatives = [dist[j] for j in range(len(labels)) if labels[j] != labels[i]]
    if not negatives:
      continue
    d_pos = max(positives) if positives else 0.0
    d_neg = min(negatives)
    losses.append(max(margin + d_pos - d_neg, 0.0))
    d_poss.append(d_pos)
    d_negs.append(d_neg)
  if not losses:
    return 0.0, 0.0, 0.0, 0.0
  losses = np.array(losses)
  return losses.mean(), np.mean(losses > 0), np.mean(d_poss), np.mean(d_negs)


def _check_triplet(features, labels, margin=0.3, metric="euclidean", atol=1e-5):
  loss, aux = batch_hard_triplet_loss(
    jnp.asarray(features), jnp.asarray(labels), margin, metric=metric
  )
  expected = _reference_triplet(features, labels, margin, metric)
  got = (loss, aux["active_fraction"], aux["mean_d_pos"], aux["mean_d_neg"])
  for value in got:
    assert value.dtype == jnp.float32 and value.shape == ()
  np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_cross_entropy_matches_reference(epsilon):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 11)).astype(np.float32) * 3
  labels = rng.integers(0, 11, size=6)
  got = cross_entropy_label_smoothing(jnp.asarray(logits), jnp.asarray(labels), epsilon)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, _reference_cross_entropy(logits, labels, epsilon), rtol=1e-5)


def test_cross_entropy_bfloat16_logits_compute_in_float32():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 7)), dtype=jnp.bfloat16)
  labels = jnp.array([0, 3, 6, 2])
  got = cross_entropy_label_smoothing(logits, labels)
  assert got.dtype == jnp.float32
  expected = _reference_cross_entropy(np.asarray(logits.astype(jnp.float32)), labels, 0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_matches_reference_on_pk_batch(seed, metric):
  rng = np.random.default_rng(seed)
  num_ids, clips_per_id = 4, 3
  labels = np.repeat(rng.permutation(100)[:num_ids], clips_per_id)
  # Small margin against the spread of the features so some triplets are active, some not.
  features = rng.normal(size=(num_ids * clips_per_id, 8)).astype(np.float32)
  features += 2.0 * np.repeat(rng.normal(size=(num_ids, 8)), clips_per_id, axis=0)
  _check_triplet(features, labels, margin=0.3 if metric == "cosine" else 2.0, metric=metric)


def test_triplet_identity_with_one_clip_uses_zero_positive_distance():
  rng = np.random.default_rng(2)
  labels = np.array([0, 0, 1, 1, 2])  # identity 2 has a single clip
  features = rng.normal(size=(5, 4)).astype(np.float32)
  # Put clip 4 near clip 0 so its [margin - d_neg]_+ term is non-zero.
  features[4] = features[0] + 0.05
  _check_triplet(features, labels, margin=0.3)
  loss, aux = batch_hard_triplet_loss(jnp.asarray(features), jnp.asarray(labels), 0.3)
  assert aux["active_fraction"] > 0


def test_triplet_all_same_label_is_zero_with_finite_gradient():
  features = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5)), jnp.float32)
  labels = jnp.zeros(4, jnp.int32)
  loss, aux = batch_hard_triplet_loss(features, labels)
  assert float(loss) == 0.0
  assert all(float(v) == 0.0 for v in aux.values())
  grad = jax.grad(lambda f: batch_hard_triplet_loss(f, labels)[0])(features)
  assert np.all(np.isfinite(grad))


def test_triplet_gradient_finite_with_duplicate_features():
  rng = np.random.default_rng(4)
  base = rng.normal(size=(3, 6)).astype(np.float32)
  # Every clip duplicated across and within identities: zero distances everywhere relevant.
  features = jnp.asarray(np.concatenate([base, base, base[:1]]))
  labels = jnp.array([0, 1, 2, 0, 1, 2, 1])
  value, grad = jax.value_and_grad(lambda f: batch_hard_triplet_loss(f, labels)[0])(features)
  assert np.isfinite(value) and value > 0
  assert np.all(np.isfinite(grad))
  # Equal clips are at distance 0, which float32's |a|^2 + |b|^2 - 2ab (reid_jax.distances, as
  # the PyTorch re-id codebases compute it) gives only up to its cancellation error: a squared
  # distance off by a few float32 ulps of |a|^2 + |b|^2, so a distance off by up to the square
  # root of that (4e-4 on one CPU, under 1e-5 on another). Every distance that is not 0 is
  # exact to 1e-5 (the tests above); a wrongly chosen positive or negative is off by 0.1 or more.
  squared_norms = np.sum(np.asarray(features, np.float64) ** 2, axis=1)
  atol = np.sqrt(8 * np.finfo(np.float32).eps * 2 * squared_norms.max())
  assert atol < 0.01
  _check_triplet(np.asarray(features), np.asarray(labels), atol=atol)


def test_triplet_bfloat16_features_compute_in_float32():
  rng = np.random.default_rng(5)
  features = jnp.asarray(rng.normal(size=(6, 4)), jnp.bfloat16)
  labels = np.array([0, 0, 1, 1, 2, 2])
  loss, _ = batch_hard_triplet_loss(features, jnp.asarray(labels))
  assert loss.dtype == jnp.float32
  expected = _reference_triplet(np.asarray(features.astype(jnp.float32)), labels, 0.3)[0]
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)


def test_triplet_under_jit_on_sharded_batch_mines_globally():
  """With the batch split over devices, mining must still see every clip."""
  devices = jax.devices()
  rng = np.random.default_rng(6)
  batch = 4 * len(devices)
  labels = np.repeat(np.arange(batch // 2), 2)
  features = rng.normal(size=(batch, 8)).astype(np.float32)
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.NamedSharding(mesh, jax.P("data"))
  loss, _ = batch_hard_triplet_loss(
    jax.device_put(features, sharding), jax.device_put(labels, sharding)
  )
  np.testing.assert_allclose(
    loss, _reference_triplet(features, labels, 0.3)[0], rtol=1e-5, atol=1e-5
  )


def test_unknown_metric_is_an_error():
  with pytest.raises(ValueError, match="manhattan"):
    triplet_distances(jnp.ones((2, 3)), "manhattan")
