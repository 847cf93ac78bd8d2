"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without any N x N matrix.

Definitions (paper notation; p a probe, N = all query + gallery items):
  * N(p, k): the k nearest items of p by the original distance d, p itself included (k + 1
    entries, as in the authors' code);
  * R(p, k) = {g in N(p, k) : p in N(g, k)}, the k-reciprocal neighbours;
  * R*(p, k) = R(p, k) plus R(q, k/2) for every q in R(p, k) whose R(q, k/2) shares more than
    2/3 of its items with R(p, k);
  * V[p, g] = exp(-d(p, g)) / sum over R*(p, k) for g in R*(p, k), else 0;
  * local query expansion: V[p] <- mean of V[g] over the k2 nearest g of p (p included);
  * Jaccard distance d_J(p, g) = 1 - sum_j min(V[p,j], V[g,j]) / sum_j max(V[p,j], V[g,j]),
    which is 1 - s / (2 - s) with s = sum_j min(...) because every row of V sums to 1;
  * final distance = (1 - lambda) d_J + lambda d.
As in the authors' feature-based code, d is the squared Euclidean (or cosine) distance divided
by its row maximum over all N items, and k/2 is rounded (k1=20 -> 10). (torchreid's port squares
its already squared distances once more, so its re-ranked numbers differ slightly.)

Memory: O(N * k1^2) for the sparse encodings plus one [block, G] block at a time:
  1. the k1+1 nearest neighbours of every item come from the exact top k of
     `reid_jax.retrieval` (the N items against themselves, over every device), and the row
     maxima from one blocked pass over the N x N distances;
  2. reciprocal sets, their expansion and V come from the neighbour lists alone, as padded
     sparse rows (column index, value);
  3. per block of queries, s = sum_j min(V[q,j], V[g,j]) is a sparse-sparse join through an
     inverted index of the gallery rows (entries sorted by column): the (query entry, gallery
     entry) pairs sharing a column are laid out flat and summed into [block, G] by one
     segment_sum, then mixed with that block's distances.
Ties in the neighbour lists follow index order, as the top k keeps them. Blocks are shaped by
`reid_jax.retrieval.block_shape` from one memory budget.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from reid_jax import retrieval
from reid_jax.distances import pairwise_distances
from reid_jax.retrieval import BLOCK_BYTES, block_shape, pad_rows

K1, K2, LAMBDA = 20, 6, 0.3
# Bytes per flattened (query entry, gallery entry) pair in the Jaccard join.
_BYTES_PER_JOIN_PAIR = 24


@functools.partial(jax.jit, static_argnames="metric")
def _row_max(rows, features, *, metric):
  return jnp.max(pairwise_distances(rows, features, metric), axis=1)


def _reciprocal(nearest):
  """[n, k] bool: item nearest[i, a] has i among its own first k neighbours too."""
  own = jnp.arange(nearest.shape[0], dtype=nearest.dtype)
  return jnp.any(nearest[nearest] == own[:, None, None], axis=-1)


def _unique_rows(index, empty):
  """Sorts each row and turns repeated entries into `empty` (which sorts last)."""
  index = jnp.sort(index, axis=1)
  repeated = jnp.concatenate(
    [jnp.zeros_like(index[:, :1], bool), index[:, 1:] == index[:, :-1]], axis=1
  )
  return jnp.sort(jnp.where(repeated, empty, index), axis=1)


@functools.partial(jax.jit, static_argnames="half")
def _expanded_sets(nearest, *, half):
  """R*(p, k1) of every p as [n, (k1+1)(half+2)] sorted indices; n marks an empty slot."""
  n = nearest.shape[0]
  recip = _reciprocal(nearest)  # R(p, k1), a mask over nearest[p]
  near_half = nearest[:, : half + 1]
  recip_half = _reciprocal(near_half)  # R(q, k1/2), a mask over near_half[q]
  cand = near_half[nearest]  # [n, k1+1, half+1]: R(q, k1/2) items for q = nearest[p, a]
  cand_mask = recip_half[nearest] & recip[:, :, None]
  in_r = jnp.any((cand[..., None] == nearest[:, None, None, :]) & recip[:, None, None, :], -1)
  overlap = jnp.sum(cand_mask & in_r, axis=-1)
  size = jnp.sum(cand_mask, axis=-1)
  expand = recip & (3 * overlap > 2 * size)
  members = jnp.concatenate(
    [
      jnp.where(recip, nearest, n),
      jnp.where(cand_mask & expand[:, :, None], cand, n).reshape(n, -1),
    ],
    axis=1,
  )
  return _unique_rows(members, n)


@functools.partial(jax.jit, static_argnames="metric")
def _encode_rows(rows, members, features, row_max, *, metric):
  """V for items `rows` [b] with R* `members` [b, W]: exp(-d) normalised over the members."""
  n = features.shape[0]
  x = features[rows]
  y = features[jnp.minimum(members, n - 1)]
  dist = pairwise_distances(x[:, None, :], y, metric)[:, 0, :]  # [b, W]
  weight = jnp.where(members < n, jnp.exp(-dist / row_max[rows][:, None]), 0.0)
  return weight / jnp.sum(weight, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames="k2")
def _expand_queries(members, values, nearest, *, k2):
  """Local query expansion: V[p] <- mean of V over p's k2 nearest; sparse rows, sorted."""
  n, width = members.shape[0], members.shape[1] * k2
  index = members[nearest[:, :k2]].reshape(n, width)
  value = values[nearest[:, :k2]].reshape(n, width) / k2
  index, value = jax.lax.sort((index, value), dimension=1, num_keys=1)
  starts = jnp.concatenate([jnp.ones((n, 1), bool), index[:, 1:] != index[:, :-1]], axis=1)
  run = jnp.cumsum(starts, axis=1) - 1
  summed = jax.vmap(lambda v, r: jax.ops.segment_sum(v, r, num_segments=width))(value, run)
  run_index = jax.vmap(lambda i, r: jnp.full(width, n, i.dtype).at[r].set(i))(index, run)
  summed = jnp.where(run_index < n, summed, 0.0)
  return run_index, summed, jnp.sum(starts & (index < n), axis=1)


@dataclasses.dataclass(frozen=True)
class KReciprocalEncoding:
  """Sparse k-reciprocal encodings of all N = Q + G items (queries first)."""

  features: jax.Array  # [N, D]
  row_max: jax.Array  # [N] largest distance from each item to all N items
  v_index: np.ndarray  # [N, W] sorted column indices of V (after query expansion); N = empty
  v_value: np.ndarray  # [N, W]
  column_start: np.ndarray  # [N + 2] where each column starts in the inverted index
  column_row: np.ndarray  # [E] gallery row (0..G-1) of each inverted-index entry
  column_value: np.ndarray  # [E]
  num_queries: int
  metric: str

  @property
  def num_gallery(self) -> int:
    return self.features.shape[0] - self.num_queries

  def pairs_per_query(self) -> np.ndarray:
    """[Q] number of (query entry, gallery entry) pairs the Jaccard join visits per query."""
    q_index = self.v_index[: self.num_queries]
    return (self.column_start[q_index + 1] - self.column_start[q_index]).sum(axis=1)


def encode(
  query_features, gallery_features, *, metric="euclidean", k1=K1, k2=K2, block_bytes=BLOCK_BYTES
) -> KReciprocalEncoding:
  """Builds the sparse k-reciprocal encodings of queries + gallery (steps 1 and 2 above)."""
  host_features = np.concatenate([query_features, gallery_features]).astype(np.float32)
  features = jnp.asarray(host_features)
  n = features.shape[0]
  k = min(k1 + 1, n)
  block, _ = block_shape(n, n, budget=block_bytes)
  row_max = np.concatenate(
    [
      np.asarray(_row_max(pad_rows(host_features[s : s + block], block), features, metric=metric))
      for s in range(0, n, block)
    ]
  )
  row_max = jnp.asarray(row_max[:n])
  # Dividing a row by its maximum keeps its order: the neighbours are the plain top k.
  _, nearest = retrieval.top_k(host_features, host_features, k, metric=metric, budget=block_bytes)
  nearest = jnp.asarray(nearest)

  members = _expanded_sets(nearest, half=min(int(np.around(k1 / 2)), k - 1))
  members = members[:, : int(jnp.max(jnp.sum(members < n, axis=1)))]
  # Member features are gathered per row: bound that [rows, W, D] gather by the budget.
  rows_per_step = int(max(1, block_bytes // (4 * members.shape[1] * features.shape[1])))
  values = jnp.concatenate(
    [
      _encode_rows(
        jnp.arange(s, min(s + rows_per_step, n)),
        members[s : s + rows_per_step],
        features,
        row_max,
        metric=metric,
      )
      for s in range(0, n, rows_per_step)
    ]
  )

  v_index, v_value, counts = _expand_queries(members, values, nearest, k2=min(k2, k))
  width = int(jnp.max(counts))
  v_index, v_value = np.asarray(v_index[:, :width]), np.asarray(v_value[:, :width])

  # Inverted index of the gallery rows, built once on the host: a stable argsort of a few
  # million integers is much faster in numpy than XLA's comparator sort on a CPU.
  num_queries = len(query_features)
  g_index = v_index[num_queries:].reshape(-1)
  filled = g_index < n
  order = np.argsort(g_index[filled], kind="stable")
  column_row = np.repeat(np.arange(n - num_queries, dtype=np.int32), width)[filled][order]
  column_value = v_value[num_queries:].reshape(-1)[filled][order]
  column_start = np.zeros(n + 2, np.int32)
  np.cumsum(np.bincount(g_index[filled], minlength=n + 1), out=column_start[1:])
  return KReciprocalEncoding(
    features, row_max, v_index, v_value, column_start, column_row, column_value, num_queries, metric
  )


@functools.partial(jax.jit, static_argnames=("num_pairs", "num_gallery"))
def _shared_mass(
  q_index, q_value, column_start, column_row, column_value, *, num_pairs, num_gallery
):
  """s[q, g] = sum_j min(V[q, j], V[g, j]) for a block of queries: [b, W] -> [b, G]."""
  rows, width = q_index.shape
  flat_index, flat_value = q_index.reshape(-1), q_value.reshape(-1)
  count = column_start[flat_index + 1] - column_start[flat_index]
  end = jnp.cumsum(count)
  begin = end - count
  # Pair p belongs to the query entry whose run [begin, end) holds p: scatter each entry's id at
  # its begin (entries with no pairs share the next one's begin and lose the max), then cummax.
  owner = (
    jnp.zeros(num_pairs, jnp.int32)
    .at[begin]
    .max(jnp.arange(rows * width, dtype=jnp.int32), mode="drop")
  )
  owner = jax.lax.cummax(owner)
  pair = jnp.arange(num_pairs, dtype=jnp.int32)
  entry = jnp.clip(
    column_start[flat_index[owner]] + pair - begin[owner], 0, column_row.shape[0] - 1
  )
  shared = jnp.minimum(flat_value[owner], column_value[entry])
  segment = jnp.where(
    pair < end[-1], (owner // width) * num_gallery + column_row[entry], rows * num_gallery
  )
  total = jax.ops.segment_sum(shared, segment, num_segments=rows * num_gallery + 1)
  return total[:-1].reshape(rows, num_gallery)


@functools.partial(jax.jit, static_argnames=("num_pairs", "num_queries", "metric"))
def _reranked_block(rows, encoding_arrays, lambda_value, *, num_pairs, num_queries, metric):
  features, row_max, q_index, q_value, column_start, column_row, column_value = encoding_arrays
  gallery = features[num_queries:]
  dist = pairwise_distances(features[rows], gallery, metric) / row_max[rows][:, None]
  shared = _shared_mass(
    q_index,
    q_value,
    column_start,
    column_row,
    column_value,
    num_pairs=num_pairs,
    num_gallery=gallery.shape[0],
  )
  jaccard = 1.0 - shared / (2.0 - shared)
  return (1.0 - lambda_value) * jaccard + lambda_value * dist


def block_rows(encoding: KReciprocalEncoding, block_bytes: int) -> int:
  """Queries per block so that one block's distances and Jaccard pairs fit in `block_bytes`
  (each row counted with the most pairs any query has)."""
  most_pairs = int(encoding.pairs_per_query().max(initial=0))
  rows, _ = block_shape(
    encoding.num_queries,
    encoding.num_gallery,
    bytes_per_row=_BYTES_PER_JOIN_PAIR * most_pairs,
    budget=block_bytes,
  )
  return rows


def distance_blocks(encoding: KReciprocalEncoding, block: int, lambda_value: float = LAMBDA):
  """Returns `distance_block(start, stop)` -> re-ranked [block, G] distances of those queries."""
  pairs = encoding.pairs_per_query()
  num_q = encoding.num_queries
  # Padding rows of the last block repeat the first queries.
  padded_rows = np.arange(-(-num_q // block) * block) % num_q
  per_block = pairs[padded_rows].reshape(-1, block).sum(axis=1)
  # One compiled shape for every block: the largest pair count, rounded up to a power of two.
  num_pairs = int(2 ** np.ceil(np.log2(max(int(per_block.max()), 1))))
  shared = (encoding.features, encoding.row_max)
  column = tuple(
    jnp.asarray(a) for a in (encoding.column_start, encoding.column_row, encoding.column_value)
  )

  def distance_block(start, stop):
    rows = padded_rows[start : start + block]
    arrays = shared + (encoding.v_index[rows], encoding.v_value[rows]) + column
    return _reranked_block(
      rows, arrays, lambda_value, num_pairs=num_pairs, num_queries=num_q, metric=encoding.metric
    )

  return distance_block


def re_ranking(
  query_features,
  gallery_features,
  *,
  metric="euclidean",
  k1=K1,
  k2=K2,
  lambda_value=LAMBDA,
  block_bytes=BLOCK_BYTES,
) -> np.ndarray:
  """Re-ranked [Q, G] distances as one host array (for small problems and tests).

  `evaluate(..., rerank=True)` consumes the same blocks without ever assembling this matrix.
  """
  encoding = encode(
    query_features, gallery_features, metric=metric, k1=k1, k2=k2, block_bytes=block_bytes
  )
  block = block_rows(encoding, block_bytes)
  distance_block = distance_blocks(encoding, block, lambda_value)
  num_q = encoding.num_queries
  return np.concatenate(
    [np.asarray(distance_block(s, min(s + block, num_q))) for s in range(0, num_q, block)]
  )[:num_q]
