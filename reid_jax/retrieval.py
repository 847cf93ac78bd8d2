"""Retrieval on device: how query x gallery work is cut into blocks, and the exact top k.

Blocks. Every computation over query x gallery pairs (ranking, re-ranking, calibrate's pair
histograms, search, the report's ranked sheets) holds one `[rows, columns]` block of pairs at a
time, shaped by `block_shape` from one memory budget, `BLOCK_BYTES`, at `BYTES_PER_PAIR` per
pair (a float32 distance and up to three temporaries of its size), so memory does not grow with
the number of queries, and for `top_k` not with the gallery either.

Top k. `top_k` finds the k nearest gallery items of every query, exactly, nearest first, ties in
gallery order. The gallery is sharded over every device of every process of the run (the `data`
mesh of `reid_jax.sharding`): each device scans its own rows in blocks, merging each block's k
best into a running k best per query, then the devices' k best are gathered and merged. A gallery
thus needs only its share of each device's memory, and its size only changes the time. Every
process must call it with the same arguments; each gets the whole answer.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from reid_jax import sharding
from reid_jax.distances import pairwise_distances

# Memory for one block of pairs and its same-sized temporaries.
BLOCK_BYTES = 256 * 2**20
# Bytes per query x gallery pair of a block: a float32 distance and three temporaries its size.
BYTES_PER_PAIR = 16
# Pairs per block when columns may be split (`top_k`): beyond a few million, the passes after
# the matmul (masks, top_k) leave the caches. On the 2-core CPU, 1,000 queries x 100,000 gallery
# rank in about 1.4x the bare matmul's time with 1,000 x 3,000 blocks, 2.3x with 1,000 x 16,000
# (bench/search.py).
MAX_BLOCK_PAIRS = 3_000_000
MAX_BLOCK_ROWS = 1024


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def block_shape(
  num_queries: int,
  num_columns: int,
  *,
  split_columns: bool = False,
  min_columns: int = 1,
  bytes_per_row: int = 0,
  budget: int = BLOCK_BYTES,
  multiple_of: int = 8,
) -> tuple[int, int]:
  """`(rows, columns)` of the blocks of a `[num_queries, num_columns]` pairwise computation.

  Whole rows (the default: ranking needs every gallery item of a query at once): as many query
  rows as fit `budget` (`bytes_per_row` adds what a row needs besides its pairs), a multiple of
  `multiple_of` (at least one multiple, whatever the budget), balanced so the last block is
  padded least. With `split_columns`, up to
  MAX_BLOCK_ROWS rows and as many columns (at least `min_columns`) as keep the block within the
  budget and MAX_BLOCK_PAIRS.
  """
  if split_columns:
    rows = min(_round_up(max(num_queries, 1), multiple_of), MAX_BLOCK_ROWS)
    pairs = min(budget // BYTES_PER_PAIR, MAX_BLOCK_PAIRS)
    return rows, max(min_columns, min(num_columns, pairs // rows))
  per_row = BYTES_PER_PAIR * max(num_columns, 1) + bytes_per_row
  most = max(multiple_of, budget // per_row // multiple_of * multiple_of)
  num_blocks = -(-max(num_queries, 1) // most)
  return _round_up(-(-max(num_queries, 1) // num_blocks), multiple_of), num_columns


def pad_rows(x: np.ndarray, rows: int, fill=0) -> np.ndarray:
  """`x` with rows of `fill` appended up to `rows` rows."""
  pad = rows - x.shape[0]
  return np.concatenate([x, np.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad > 0 else x


# -----------------------------------------------------------------------------------------------
# Top k over a gallery sharded over the mesh.
# -----------------------------------------------------------------------------------------------


def _merge(best_d, best_i, d, i, k):
  """The k smallest of the running best and a block's candidates; on equal distances the
  running best (earlier gallery rows) come first, as `lax.top_k` keeps the lower position."""
  d = jnp.concatenate([best_d, d], axis=1)
  i = jnp.concatenate([best_i, i], axis=1)
  neg, pos = jax.lax.top_k(-d, k)
  return -neg, jnp.take_along_axis(i, pos, axis=1)


def _apply_rule(exclude, q_labels: dict, g_labels: dict):
  """[b, g] bool: the rule on every pair of `[b]` query and `[g]` gallery labels."""
  return exclude(
    {name: v[:, None] for name, v in q_labels.items()},
    {name: v[None, :] for name, v in g_labels.items()},
  )


def _left_out(exclude, q_labels, g_labels, g_valid, start, block, padded):
  """[b, block] bool: the pairs of this block that may not rank (None: none)."""
  take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, block)
  left_out = None
  if padded:
    left_out = ~take(g_valid)[None, :]
  if exclude is not None:
    rule = _apply_rule(exclude, q_labels, {name: take(v) for name, v in g_labels.items()})
    left_out = rule if left_out is None else left_out | rule
  return left_out


def _shard_top_k(
  queries, q_labels, gallery, g_labels, g_valid, *, k, metric, block, exclude, padded
):
  """One device: the k best of its gallery rows for every query, then merged over the mesh.

  The rows are scanned in blocks of `block`; when they do not divide into whole blocks, the last
  block ends at the last row and leaves out the rows the one before it saw."""
  shard_rows = gallery.shape[0]
  offset = jax.lax.axis_index("data") * shard_rows

  def merge_block(best, start, seen_up_to=None):
    dist = pairwise_distances(queries, jax.lax.dynamic_slice_in_dim(gallery, start, block), metric)
    left_out = _left_out(exclude, q_labels, g_labels, g_valid, start, block, padded)
    if seen_up_to is not None:
      seen = (start + jnp.arange(block) < seen_up_to)[None, :]
      left_out = seen if left_out is None else left_out | seen
    if left_out is not None:
      dist = jnp.where(left_out, jnp.inf, dist)
    neg, pos = jax.lax.top_k(-dist, k)
    return _merge(*best, -neg, (offset + start + pos).astype(jnp.int32), k)

  best = (
    jnp.full((queries.shape[0], k), jnp.inf, jnp.float32),
    jnp.full((queries.shape[0], k), -1, jnp.int32),
  )
  whole = shard_rows // block
  best, _ = jax.lax.scan(lambda b, i: (merge_block(b, i * block), None), best, jnp.arange(whole))
  if whole * block < shard_rows:
    best = merge_block(best, shard_rows - block, seen_up_to=whole * block)
  # Device order is gallery order: merging the gathered lists keeps ties in gallery order.
  all_d = jax.lax.all_gather(best[0], "data", axis=1, tiled=True)
  all_i = jax.lax.all_gather(best[1], "data", axis=1, tiled=True)
  none = jnp.zeros((queries.shape[0], 0), jnp.float32)
  return _merge(none, none.astype(jnp.int32), all_d, all_i, k)


@dataclasses.dataclass(frozen=True)
class TopKLayout:
  """How `top_k` lays a gallery over the mesh: equal shards of `shard_rows` rows per device (the
  last ones `padded`, and masked out), scanned in blocks of `block` rows against `query_rows`
  queries at a time."""

  shard_rows: int
  block: int
  query_rows: int
  padded: bool


def top_k_layout(
  num_queries: int, num_gallery: int, k: int, *, mesh, budget: int = BLOCK_BYTES
) -> TopKLayout:
  """The layout of a `[num_queries, num_gallery]` top k over `mesh`."""
  # Equal shards of at least k rows (the last device's padded: masked out).
  shard_rows = max(-(-num_gallery // mesh.size), k)
  rows, block = block_shape(
    num_queries, shard_rows, split_columns=True, min_columns=k, budget=budget
  )
  return TopKLayout(shard_rows, block, rows, shard_rows * mesh.size > num_gallery)


@functools.lru_cache(maxsize=None)
def top_k_program(mesh, k: int, metric: str, layout: TopKLayout, exclude=None):
  """The jitted program of one block of queries: `(queries, query labels, gallery, gallery
  labels, gallery validity) -> (distances, indices)`, the gallery's arrays sharded over `mesh`."""
  replicated, rows = PartitionSpec(), PartitionSpec("data")
  return jax.jit(
    jax.shard_map(
      functools.partial(
        _shard_top_k,
        k=k,
        metric=metric,
        block=layout.block,
        exclude=exclude,
        padded=layout.padded,
      ),
      mesh=mesh,
      in_specs=(replicated, replicated, rows, rows, rows),
      out_specs=(replicated, replicated),
      check_vma=False,
    )
  )


def _sharded_rows(values: np.ndarray, padded_rows: int, fill, mesh) -> jax.Array:
  """A host array, padded with `fill` rows to `padded_rows`, as a global array sharded by rows:
  each process reads only the rows of its own devices, and only a shard that reaches past the
  end is copied."""
  values = np.asarray(values)
  shape = (padded_rows,) + values.shape[1:]

  def rows(index):
    start, stop, _ = index[0].indices(padded_rows)
    return pad_rows(values[start : min(stop, len(values))], stop - start, fill)

  return jax.make_array_from_callback(shape, NamedSharding(mesh, PartitionSpec("data")), rows)


def _labels(labels: dict | None, count: int) -> dict[str, np.ndarray]:
  labels = {name: np.asarray(v) for name, v in (labels or {}).items()}
  for name, v in labels.items():
    if len(v) != count:
      raise ValueError(f"label {name!r} has {len(v)} values for {count} items")
  return labels


def top_k(
  queries,
  gallery,
  k: int,
  *,
  metric: str = "euclidean",
  exclude=None,
  query_labels: dict | None = None,
  gallery_labels: dict | None = None,
  mesh=None,
  budget: int = BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
  """`(distances [Q, k], indices [Q, k])` of the k nearest gallery items of each query, nearest
  first, ties in gallery order.

  Args:
    queries: [Q, D]; gallery: [G, D] host arrays, the same on every process.
    k: how many; a query with fewer than k candidates gets index -1 and distance inf in the rest.
    metric: 'euclidean' (squared) or 'cosine', as `pairwise_distances`.
    exclude: `(query labels, gallery labels) -> bool`: the pairs that may not rank, from
      broadcasting `[b, 1]` and `[1, g]` label arrays (e.g. the same camera, or the junk rule of
      `evaluation.ranking`). A module-level function: it keys the compiled program.
    query_labels, gallery_labels: `{name: [Q] / [G] numbers}` the rule reads.
    mesh: the devices the gallery is sharded over (default every device of every process).
    budget: bytes of one block of pairs on each device.
  """
  k = int(k)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  queries, gallery = np.asarray(queries, np.float32), np.asarray(gallery, np.float32)
  num_q, num_g = len(queries), len(gallery)
  q_labels, g_labels = _labels(query_labels, num_q), _labels(gallery_labels, num_g)
  layout = top_k_layout(num_q, num_g, k, mesh=mesh, budget=budget)
  q_rows, padded = layout.query_rows, layout.shard_rows * mesh.size
  device_gallery = (
    _sharded_rows(gallery, padded, 0.0, mesh),
    {name: _sharded_rows(v, padded, 0, mesh) for name, v in g_labels.items()},
    _sharded_rows(np.ones(num_g, bool), padded, False, mesh),
  )
  program = top_k_program(mesh, k, metric, layout, exclude)
  replicated = sharding.replicated(mesh)
  out_d, out_i = [], []
  for start in range(0, num_q, q_rows):
    part = lambda x: pad_rows(x[start : start + q_rows], q_rows)
    block = sharding.replicate(
      (part(queries), {name: part(v) for name, v in q_labels.items()}), replicated
    )
    d, i = program(*block, *device_gallery)
    real = min(q_rows, num_q - start)
    out_d.append(np.asarray(d.addressable_data(0))[:real])
    out_i.append(np.asarray(i.addressable_data(0))[:real])
  if not out_d:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  d, i = np.concatenate(out_d), np.concatenate(out_i)
  return d, np.where(np.isfinite(d), i, -1)


@functools.partial(jax.jit, static_argnames=("metric", "exclude"))
def _within_block(queries, q_labels, gallery, g_labels, g_valid, threshold, *, metric, exclude):
  dist = pairwise_distances(queries, gallery, metric)
  left_out = ~g_valid[None, :] | (dist > threshold)
  if exclude is not None:
    left_out = left_out | _apply_rule(exclude, q_labels, g_labels)
  return jnp.where(left_out, jnp.inf, dist)


def within(
  queries,
  gallery,
  threshold: float,
  *,
  metric: str = "euclidean",
  exclude=None,
  query_labels: dict | None = None,
  gallery_labels: dict | None = None,
  budget: int = BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every pair at most `threshold` apart: `(query indices, gallery indices, distances)`, by
  query then distance (ties in gallery order); `exclude` and the labels as in `top_k`. Blocks of
  queries x gallery on the default device, so memory is bounded whatever the gallery's size."""
  queries, gallery = np.asarray(queries, np.float32), np.asarray(gallery, np.float32)
  num_q, num_g = len(queries), len(gallery)
  q_labels, g_labels = _labels(query_labels, num_q), _labels(gallery_labels, num_g)
  rows, columns = block_shape(num_q, num_g, split_columns=True, budget=budget)
  valid = np.ones(num_g, bool)  # padding columns of the last gallery block are False
  hits = []
  for q0 in range(0, num_q, rows):
    part = lambda x: pad_rows(x[q0 : q0 + rows], rows)
    q_block = (part(queries), {name: part(v) for name, v in q_labels.items()})
    for g0 in range(0, num_g, columns):
      cut = lambda x: pad_rows(x[g0 : g0 + columns], columns)
      dist = np.asarray(
        _within_block(
          *q_block,
          cut(gallery),
          {name: cut(v) for name, v in g_labels.items()},
          cut(valid),
          np.float32(threshold),
          metric=metric,
          exclude=exclude,
        )
      )[: min(rows, num_q - q0)]
      q, g = np.nonzero(np.isfinite(dist))
      hits.append((q + q0, g + g0, dist[q, g]))
  q, g, d = (np.concatenate(x) for x in zip(*hits)) if hits else (np.zeros(0, int),) * 3
  order = np.lexsort((g, d, q))
  return q[order].astype(np.int64), g[order].astype(np.int64), d[order].astype(np.float32)


def group_codes(*labels) -> tuple[np.ndarray, ...]:
  """int32 codes of sequences of labels (strings, numbers, tuples) in one shared numbering, e.g.
  the cameras of a query file and of a gallery file: equal labels get equal codes."""
  values = [a.tolist() if isinstance(a, np.ndarray) else list(a) for a in labels]
  values = [[tuple(v) if isinstance(v, list) else v for v in vs] for vs in values]
  names = {v: n for n, v in enumerate(sorted(set().union(*map(set, values))))}
  return tuple(np.array([names[v] for v in vs], np.int32) for vs in values)
