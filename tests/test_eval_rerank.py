"""k-reciprocal re-ranking against a dense numpy version written from Zhong et al. (2017)."""

import numpy as np
import pytest
from test_eval_ranking import reference_metrics

from reid_jax.evaluation import evaluate, re_ranking


def reference_rerank(query, gallery, k1, k2, lambda_value):
  """Sets and dense matrices straight from the paper (with the authors' concrete choices)."""
  x = np.concatenate([query, gallery]).astype(np.float64)
  n, num_q = len(x), len(query)
  dist = ((x[:, None] - x[None]) ** 2).sum(-1)
  dist = dist / dist.max(axis=1, keepdims=True)
  order = np.argsort(dist, axis=1, kind="stable")
  nearest = lambda p, k: set(order[p, : k + 1].tolist())  # N(p, k), p included
  reciprocal = lambda p, k: {g for g in nearest(p, k) if p in nearest(g, k)}  # R(p, k)
  half = int(np.around(k1 / 2))
  v = np.zeros((n, n))
  expanded = 0
  for p in range(n):
    r = reciprocal(p, k1)
    r_star = set(r)
    for q in r:
      r_q = reciprocal(q, half)
      if len(r_q & r) > 2 / 3 * len(r_q):
        r_star |= r_q
    expanded += len(r_star) > len(r)
    members = sorted(r_star)
    weight = np.exp(-dist[p, members])
    v[p, members] = weight / weight.sum()
  v = np.stack([v[order[p, :k2]].mean(axis=0) for p in range(n)])  # local query expansion
  vq, vg = v[:num_q, None], v[None, num_q:]
  jaccard = 1 - np.minimum(vq, vg).sum(-1) / np.maximum(vq, vg).sum(-1)
  return (1 - lambda_value) * jaccard + lambda_value * dist[:num_q, num_q:], expanded


@pytest.mark.parametrize("k1,k2", [(20, 6), (6, 3)])
def test_re_ranking_matches_reference(k1, k2):
  rng = np.random.default_rng(k1)
  query = rng.normal(size=(20, 8)).astype(np.float32)
  gallery = rng.normal(size=(50, 8)).astype(np.float32)
  want, expanded = reference_rerank(query, gallery, k1, k2, 0.3)
  assert expanded > 0  # the case exercises the R* expansion
  for block_bytes in (20_000, 2**28):  # small blocks: many query blocks and kNN blocks
    got = re_ranking(query, gallery, k1=k1, k2=k2, lambda_value=0.3, block_bytes=block_bytes)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_evaluate_with_rerank_ranks_the_reranked_distances():
  rng = np.random.default_rng(5)
  centres = rng.normal(size=(8, 16))
  q_pids, g_pids = rng.integers(0, 8, 24), rng.integers(0, 8, 60)
  query = (centres[q_pids] + rng.normal(size=(24, 16))).astype(np.float32)
  gallery = (centres[g_pids] + rng.normal(size=(60, 16))).astype(np.float32)
  q_camids, g_camids = np.zeros(24, int), np.ones(60, int)
  distmat, _ = reference_rerank(query, gallery, 20, 6, 0.3)
  want_cmc, want_map, want_minp = reference_metrics(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10
  )
  got = evaluate(query, gallery, q_pids, g_pids, q_camids, g_camids, max_rank=10, rerank=True)
  np.testing.assert_allclose(got["cmc"], want_cmc, atol=1e-6)
  assert got["mAP"] == pytest.approx(want_map, abs=1e-6)
  assert got["mINP"] == pytest.approx(want_minp, abs=1e-6)
  plain = evaluate(query, gallery, q_pids, g_pids, q_camids, g_camids, max_rank=10)
  assert plain["mAP"] != pytest.approx(got["mAP"], abs=1e-4)  # re-ranking changed something
