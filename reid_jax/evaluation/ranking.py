"""Retrieval metrics (CMC, mAP, mINP) computed on device, one block of queries at a time.

Rule (the one of the public re-id codebases, plus MARS junk):
  * a gallery item with the query's pid AND camera is junk for that query, as is any gallery
    item with pid -1; junk is removed from the ranking, it is never a negative;
  * pid 0 (MARS distractors) is an ordinary label, hence a negative for every real query;
  * a query left without any match is skipped (it counts in no average).
Ties: the gallery is ranked by a stable sort on distance, so equal distances keep gallery index
order; results never depend on a sort implementation (numpy's default argsort is not stable).

How AP is computed without sorting rows (a comparator sort of every row is the slowest thing
XLA does on a CPU): a query has few matches (M slots, padded), so sort just those by (distance,
index), then give every gallery item its bucket = the number of matches ranked before it (M
compares per item in fused elementwise passes), histogram the kept items by bucket (one
segment_sum) and take a cumulative sum: the j-th match's rank among the kept items is the number
of kept items in buckets 0..j, minus one. From the match ranks r_1 < ... < r_n:
AP = mean_i(i / (r_i + 1)), CMC(k) hit iff r_1 < k, INP = n / (r_n + 1).
The cost is O(M) per gallery item, M = the most gallery items any query's pid has (about 20-60
on MARS); per-query statistics are float32 on device, averaged in float64 on the host.
"""

import jax
import jax.numpy as jnp
import numpy as np

from reid_jax.distances import check_metric, pairwise_distances
from reid_jax.evaluation import rerank as rerank_lib
from reid_jax.retrieval import BLOCK_BYTES, block_shape, pad_rows

JUNK_PID = -1
# Match slots compared per pass over a distance block: one fused elementwise loop each.
_SLOTS_PER_PASS = 8


def is_junk(q_pids, q_camids, g_pids, g_camids):
  """Which gallery items are junk for which query (the rule of this module's docstring): pid -1,
  or the query's pid seen by the query's camera. Broadcasts; numpy or jax arrays."""
  return (g_pids == JUNK_PID) | ((g_pids == q_pids) & (g_camids == q_camids))


def match_table(
  q_pids: np.ndarray, g_pids: np.ndarray, multiple_of: int = _SLOTS_PER_PASS
) -> np.ndarray:
  """[Q, M] int32 gallery indices sharing the query's pid, ascending, padded with -1.

  Junk (`is_junk`) is removed later on device; queries with pid -1 get no candidates, since all
  of them would be junk.
  """
  q_pids = np.asarray(q_pids)
  order = np.argsort(g_pids, kind="stable")
  sorted_pids = np.asarray(g_pids)[order]
  start = np.searchsorted(sorted_pids, q_pids, side="left")
  count = np.searchsorted(sorted_pids, q_pids, side="right") - start
  count[q_pids == JUNK_PID] = 0
  width = -(-max(1, int(count.max(initial=0))) // multiple_of) * multiple_of
  slot = np.arange(width)
  position = np.minimum(start[:, None] + slot, len(order) - 1)
  return np.where(slot < count[:, None], order[position], -1).astype(np.int32)


def rank_block(dist, q_pids, q_camids, match_idx, g_pids, g_camids):
  """Per-query retrieval statistics for one block of distances.

  Args:
    dist: [b, G] float32 distances.
    q_pids, q_camids: [b] int32.
    match_idx: [b, M] int32 from `match_table` (-1 = padding).
    g_pids, g_camids: [G] int32.
  Returns:
    dict of [b] arrays: `first_rank` (0-based rank of the first match among kept items),
    `ap`, `inp` (float32), `valid` (bool: the query has at least one match).
  """
  num_rows, num_gallery = dist.shape
  num_slots = match_idx.shape[1]
  q_pids, q_camids = q_pids[:, None], q_camids[:, None]
  keep = ~is_junk(q_pids, q_camids, g_pids[None, :], g_camids[None, :])
  safe_idx = jnp.maximum(match_idx, 0)
  # A match: a gallery item of the query's pid (the table's candidates) that is not junk.
  is_match = (match_idx >= 0) & ~is_junk(q_pids, q_camids, g_pids[safe_idx], g_camids[safe_idx])
  # Unused slots sort last and never precede a gallery item (index num_gallery is past them all).
  match_dist = jnp.where(is_match, jnp.take_along_axis(dist, safe_idx, axis=1), jnp.inf)
  match_pos = jnp.where(is_match, safe_idx, num_gallery)
  match_dist, match_pos = jax.lax.sort((match_dist, match_pos), dimension=1, num_keys=2)
  gallery_pos = jnp.arange(num_gallery, dtype=jnp.int32)[None, :]

  def count_preceding_matches(chunk, bucket):
    for k in range(_SLOTS_PER_PASS):
      slot = chunk * _SLOTS_PER_PASS + k
      m_dist = jax.lax.dynamic_slice_in_dim(match_dist, slot, 1, axis=1)
      m_pos = jax.lax.dynamic_slice_in_dim(match_pos, slot, 1, axis=1)
      bucket += ((m_dist < dist) | ((m_dist == dist) & (m_pos < gallery_pos))).astype(jnp.int32)
    return bucket

  # bucket[q, g] = number of matches ranked before gallery item g.
  bucket = jax.lax.fori_loop(
    0, num_slots // _SLOTS_PER_PASS, count_preceding_matches, jnp.zeros(dist.shape, jnp.int32)
  )
  # Histogram of kept items per bucket (junk goes to one extra, dropped segment).
  num_buckets = num_slots + 1
  segment = jnp.where(
    keep,
    bucket + num_buckets * jnp.arange(num_rows, dtype=jnp.int32)[:, None],
    num_rows * num_buckets,
  )
  histogram = jax.ops.segment_sum(
    jnp.ones(segment.size, jnp.int32), segment.reshape(-1), num_segments=num_rows * num_buckets + 1
  )
  histogram = histogram[:-1].reshape(num_rows, num_buckets)
  # Kept items in buckets 0..j are everything before the j-th match, plus the match itself.
  rank = jnp.cumsum(histogram, axis=1)[:, :num_slots] - 1  # [b, M]
  used = match_pos < num_gallery
  num_matches = jnp.sum(used, axis=1)
  hit_number = jnp.arange(1, num_slots + 1, dtype=jnp.float32)
  precision_at_hits = jnp.where(used, hit_number / (rank + 1).astype(jnp.float32), 0.0)
  last_rank = jnp.take_along_axis(rank, jnp.maximum(num_matches - 1, 0)[:, None], axis=1)[:, 0]
  denom = jnp.maximum(num_matches, 1).astype(jnp.float32)
  return dict(
    first_rank=rank[:, 0],
    ap=jnp.sum(precision_at_hits, axis=1) / denom,
    inp=num_matches.astype(jnp.float32) / (last_rank + 1).astype(jnp.float32),
    valid=num_matches > 0,
  )


_rank_block_jit = jax.jit(rank_block)


def summarize(per_query: dict, max_rank: int) -> dict:
  """Averages per-query statistics over valid queries: cmc [max_rank], mAP, mINP (float64)."""
  valid = np.asarray(per_query["valid"], bool)
  if not valid.any():
    raise ValueError("no query has a match in the gallery")
  first = np.asarray(per_query["first_rank"])[valid]
  cmc = (first[:, None] < np.arange(1, max_rank + 1)[None, :]).mean(axis=0)
  return dict(
    cmc=cmc,
    mAP=float(np.asarray(per_query["ap"], np.float64)[valid].mean()),
    mINP=float(np.asarray(per_query["inp"], np.float64)[valid].mean()),
    num_valid_queries=int(valid.sum()),
  )


def _prepare(q_pids, g_pids, q_camids, g_camids, block):
  q_pids = np.asarray(q_pids, np.int32)
  q_camids = np.asarray(q_camids, np.int32)
  padded = -(-len(q_pids) // block) * block
  matches = pad_rows(match_table(q_pids, g_pids), padded, -1)
  return (
    pad_rows(q_pids, padded, JUNK_PID),
    pad_rows(q_camids, padded, -1),
    matches,
    np.asarray(g_pids, np.int32),
    np.asarray(g_camids, np.int32),
  )


def _effective_max_rank(max_rank: int, num_gallery: int) -> int:
  # As in the PyTorch codebases: ranks beyond the gallery size are meaningless.
  return min(max_rank, num_gallery)


def rank_in_blocks(distance_block, q_pids, g_pids, q_camids, g_camids, *, block: int) -> dict:
  """Per-query statistics, asking `distance_block(start, stop)` for one [block, G] block at a time.

  `distance_block` returns distances for query rows [start, stop), padded to `block` rows. The
  loop waits for each block's (tiny) results before asking for the next, so at most one
  distance block exists at a time.
  """
  num_q = len(q_pids)
  q_pids, q_camids, matches, g_pids, g_camids = _prepare(q_pids, g_pids, q_camids, g_camids, block)
  g_pids, g_camids = jax.device_put(g_pids), jax.device_put(g_camids)
  outputs = []
  for start in range(0, num_q, block):
    rows = slice(start, start + block)
    stats = _rank_block_jit(
      distance_block(start, min(start + block, num_q)),
      q_pids[rows],
      q_camids[rows],
      matches[rows],
      g_pids,
      g_camids,
    )
    outputs.append(jax.device_get(stats))
  return {k: np.concatenate([o[k] for o in outputs])[:num_q] for k in outputs[0]}


def rank_statistics_from_distances(
  distmat, q_pids, g_pids, q_camids, g_camids, *, block_bytes: int = BLOCK_BYTES
) -> dict:
  """Per-query statistics for a host distance matrix, sent to device one row block at a time."""
  num_q, num_g = np.shape(distmat)
  block, _ = block_shape(num_q, num_g, budget=block_bytes)
  rows = lambda start, stop: pad_rows(np.asarray(distmat[start:stop], np.float32), block, 0.0)
  return rank_in_blocks(rows, q_pids, g_pids, q_camids, g_camids, block=block)


_pairwise_distances_jit = jax.jit(pairwise_distances, static_argnames="metric")


def rank_statistics_from_features(
  query_features,
  gallery_features,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  *,
  metric: str = "euclidean",
  block_bytes: int = BLOCK_BYTES,
) -> dict:
  """Per-query statistics; distances are computed on device one [block, G] block at a time."""
  num_q, num_g = len(query_features), len(gallery_features)
  block, _ = block_shape(num_q, num_g, budget=block_bytes)
  gallery = jax.device_put(np.asarray(gallery_features, np.float32))
  query = np.asarray(query_features, np.float32)
  rows = lambda start, stop: _pairwise_distances_jit(
    pad_rows(query[start:stop], block, 0.0), gallery, metric=metric
  )
  return rank_in_blocks(rows, q_pids, g_pids, q_camids, g_camids, block=block)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
  """CMC and mAP from a query x gallery distance matrix (numpy in, numpy out).

  The signature of the PyTorch re-id codebases (`eval_func`/`evaluate_rank`), with the rule in
  this module's docstring: same pid + same camera and pid -1 are junk, queries without a match are
  skipped, ties keep gallery order. Rows are sent to the device one block at a time.

  Args:
    distmat: [Q, G] distances (smaller = more similar).
    q_pids, g_pids, q_camids, g_camids: integer labels, [Q] and [G].
    max_rank: CMC length (capped at G).
  Returns:
    (cmc, mAP): cmc float64 [max_rank], cmc[k-1] = fraction of valid queries with a match in the
    top k; mAP float in [0, 1].
  """
  stats = rank_statistics_from_distances(distmat, q_pids, g_pids, q_camids, g_camids)
  summary = summarize(stats, _effective_max_rank(max_rank, np.shape(distmat)[1]))
  return summary["cmc"], summary["mAP"]


def evaluate(
  query_features,
  gallery_features,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  *,
  metric="euclidean",
  max_rank=50,
  rerank=False,
  block_bytes=BLOCK_BYTES,
):
  """CMC, mAP and mINP from features, with distances and ranking on device in query blocks.

  The full query x gallery distance matrix never exists: each block of queries gets its
  [block, G] distances (optionally k-reciprocal re-ranked, k1=20, k2=6, lambda=0.3), which are
  ranked at once and dropped. The rule is this module's docstring's (same pid + same camera and
  pid -1 are junk, queries without a match skipped, ties in gallery order).

  Args:
    query_features: [Q, D]; gallery_features: [G, D] (numpy or jax).
    q_pids, g_pids, q_camids, g_camids: integer labels, [Q] and [G].
    metric: 'euclidean' (squared Euclidean distance) or 'cosine' (1 - cosine similarity).
    max_rank: CMC length (capped at G).
    rerank: apply k-reciprocal re-ranking over queries + gallery first.
    block_bytes: memory for one block of distances and its temporaries; sets the block size.
  Returns:
    dict(cmc=float64 [max_rank], mAP=float, mINP=float, num_valid_queries=int,
         per_query=dict of [Q] arrays first_rank, ap, inp, valid).
  """
  check_metric(metric)
  if rerank:
    encoding = rerank_lib.encode(
      query_features, gallery_features, metric=metric, block_bytes=block_bytes
    )
    block = rerank_lib.block_rows(encoding, block_bytes)
    stats = rank_in_blocks(
      rerank_lib.distance_blocks(encoding, block), q_pids, g_pids, q_camids, g_camids, block=block
    )
  else:
    stats = rank_statistics_from_features(
      query_features,
      gallery_features,
      q_pids,
      g_pids,
      q_camids,
      g_camids,
      metric=metric,
      block_bytes=block_bytes,
    )
  result = summarize(stats, _effective_max_rank(max_rank, len(gallery_features)))
  result["per_query"] = stats
  return result
