"""The one pairwise-distance implementation: against numpy, batched, and its gradient at 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reid_jax.distances import euclidean_distances, pairwise_distances
from reid_jax.evaluation.ranking import is_junk


def _features(seed, *shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_squared_euclidean_and_cosine_match_numpy():
  x, y = _features(0, 5, 7), _features(1, 4, 7)
  expected = ((x[:, None] - y[None]) ** 2).sum(-1)
  np.testing.assert_allclose(pairwise_distances(x, y, "euclidean"), expected, rtol=1e-5)
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  np.testing.assert_allclose(pairwise_distances(x, y, "cosine"), 1 - unit(x) @ unit(y).T, atol=1e-6)
  np.testing.assert_allclose(euclidean_distances(x, y), np.sqrt(expected), rtol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_leading_dimensions_are_batch_dimensions(metric):
  x, y = _features(2, 3, 1, 6), _features(3, 3, 5, 6)
  batched = pairwise_distances(x, y, metric)
  assert batched.shape == (3, 1, 5)
  for b in range(3):
    np.testing.assert_allclose(batched[b], pairwise_distances(x[b], y[b], metric), rtol=1e-6)


def test_euclidean_gradient_is_finite_at_zero_distance():
  x = jnp.ones((2, 4))
  grad = jax.grad(lambda v: euclidean_distances(v, v).sum())(x)
  assert np.isfinite(np.asarray(grad)).all()


def test_unknown_metric_is_named():
  with pytest.raises(ValueError, match="'manhattan'"):
    pairwise_distances(np.ones((2, 3)), np.ones((2, 3)), "manhattan")


def test_junk_is_pid_minus_one_or_same_pid_and_camera():
  g_pids = np.array([5, 5, -1, 0, 7])
  g_camids = np.array([1, 2, 2, 1, 1])
  np.testing.assert_array_equal(is_junk(5, 1, g_pids, g_camids), [True, False, True, False, False])
  # Broadcast over queries, as the ranking does on device.
  junk = is_junk(np.array([[5], [0]]), np.array([[1], [1]]), g_pids[None], g_camids[None])
  np.testing.assert_array_equal(junk[1], [False, False, True, True, False])
