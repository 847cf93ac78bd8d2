"""Ranking metrics against a plain numpy implementation written from the definitions."""

import numpy as np
import pytest

from reid_jax.distances import pairwise_distances
from reid_jax.evaluation import evaluate, evaluate_rank, ranking
from reid_jax.retrieval import block_shape


def reference_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  """One query at a time: stable sort, drop junk, read off CMC, AP and INP."""
  cmc_sum, aps, inps = np.zeros(max_rank), [], []
  for i in range(len(q_pids)):
    order = np.argsort(distmat[i], kind="stable")
    pids, cams = g_pids[order], g_camids[order]
    junk = (pids == -1) | ((pids == q_pids[i]) & (cams == q_camids[i]))
    hits = ((pids == q_pids[i]) & ~junk)[~junk]
    if not hits.any():
      continue
    ranks = np.flatnonzero(hits)  # 0-based ranks of the matches among kept items
    cmc_sum += np.arange(max_rank) >= ranks[0]
    aps.append(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
    inps.append(len(ranks) / (ranks[-1] + 1))
  return cmc_sum / len(aps), np.mean(aps), np.mean(inps)


def random_problem(rng, num_q, num_g, num_ids=12, num_cams=3, levels=6):
  """Integer distances (many ties), junk labels, queries with no or only same-camera matches."""
  distmat = rng.integers(0, levels, (num_q, num_g)).astype(np.float32)
  g_pids = rng.integers(-1, num_ids, num_g)  # includes junk (-1) and distractors (0)
  g_camids = rng.integers(0, num_cams, num_g)
  q_pids = rng.integers(1, num_ids + 3, num_q)  # ids >= num_ids have no gallery item
  q_pids[:2] = -1
  q_camids = rng.integers(0, num_cams, num_q)
  # A query whose only gallery items share its camera: junk, so it must be skipped.
  g_pids[:3], g_camids[:3], q_pids[2], q_camids[2] = 99, 1, 99, 1
  return distmat, q_pids, g_pids, q_camids, g_camids


def test_reference_on_a_hand_worked_case():
  # Gallery by distance: g0 (match), g1 (other id), g2 (same id, same camera: junk), g3 (match).
  distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
  labels = (np.array([5]), np.array([5, 7, 5, 5]), np.array([0]), np.array([1, 1, 0, 2]))
  cmc, ap, inp = reference_metrics(distmat, *labels, max_rank=3)
  np.testing.assert_allclose(cmc, [1, 1, 1])
  assert ap == pytest.approx((1 / 1 + 2 / 3) / 2)
  assert inp == pytest.approx(2 / 3)
  got_cmc, got_ap = evaluate_rank(distmat, *labels, max_rank=3)
  np.testing.assert_allclose(got_cmc, cmc)
  assert got_ap == pytest.approx(ap, abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_rank_matches_reference(seed):
  rng = np.random.default_rng(seed)
  problem = random_problem(rng, num_q=37, num_g=211)
  want_cmc, want_map, want_minp = reference_metrics(*problem, max_rank=20)
  cmc, mean_ap = evaluate_rank(*problem, max_rank=20)
  np.testing.assert_allclose(cmc, want_cmc, atol=1e-6)
  assert mean_ap == pytest.approx(want_map, abs=1e-6)
  stats = ranking.summarize(ranking.rank_statistics_from_distances(*problem), 20)
  assert stats["mINP"] == pytest.approx(want_minp, abs=1e-6)


def test_blocked_equals_unblocked():
  problem = random_problem(np.random.default_rng(2), num_q=45, num_g=150)
  whole = ranking.rank_statistics_from_distances(*problem, block_bytes=2**30)
  blocked = ranking.rank_statistics_from_distances(*problem, block_bytes=1)  # 8-row blocks
  assert block_shape(45, 150, budget=1) == (8, 150)
  assert block_shape(45, 150, budget=2**30) == (48, 150)
  for key in whole:
    np.testing.assert_array_equal(blocked[key], whole[key])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_from_features_matches_reference(metric):
  rng = np.random.default_rng(3)
  # Small integer features: squared Euclidean distances are exact integers (with ties).
  query = rng.integers(-2, 3, (30, 6)).astype(np.float32)
  gallery = rng.integers(-2, 3, (120, 6)).astype(np.float32)
  _, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 30, 120)
  if metric == "euclidean":
    distmat = ((query[:, None].astype(np.float64) - gallery[None]) ** 2).sum(-1)
  else:
    query, gallery = query + rng.normal(size=query.shape), gallery + rng.normal(size=gallery.shape)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    distmat = 1 - unit(query) @ unit(gallery).T
  want_cmc, want_map, want_minp = reference_metrics(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10
  )
  for block_bytes in (1, 2**30):
    got = evaluate(
      query,
      gallery,
      q_pids,
      g_pids,
      q_camids,
      g_camids,
      metric=metric,
      max_rank=10,
      block_bytes=block_bytes,
    )
    np.testing.assert_allclose(got["cmc"], want_cmc, atol=1e-6)
    assert got["mAP"] == pytest.approx(want_map, abs=1e-6)
    assert got["mINP"] == pytest.approx(want_minp, abs=1e-6)
  np.testing.assert_allclose(
    np.asarray(pairwise_distances(query, gallery, metric)), distmat, atol=1e-5
  )


def test_max_rank_is_capped_and_no_valid_query_raises():
  cmc, _ = evaluate_rank(
    np.zeros((2, 4)),
    np.array([1, 2]),
    np.array([1, 2, 3, 4]),
    np.array([0, 0]),
    np.array([1, 1, 1, 1]),
    max_rank=50,
  )
  assert cmc.shape == (4,)
  with pytest.raises(ValueError, match="no query"):
    evaluate_rank(
      np.zeros((1, 3)), np.array([1]), np.array([1, 2, 3]), np.array([0]), np.array([0, 0, 0])
    )
  with pytest.raises(ValueError, match="'l1' is not one of"):
    evaluate(np.zeros((1, 2)), np.zeros((3, 2)), [1], [1, 2, 3], [0], [1, 1, 1], metric="l1")
