"""`search` mode: the nearest gallery tracklets of every query tracklet, and the matches.

Exact top-k on device in blocks of queries x gallery whose size is fixed by the memory budget
(`reid_jax.distances.BLOCK_BYTES`), so the gallery's size only changes the time: each block's
k best are merged into the running k best of its queries. When the query and gallery files are
the same, a tracklet is never compared with its own camera (itself included): those pairs are
what the tracker already links.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from reid_jax.distances import BLOCK_BYTES, pairwise_distances

log = logging.getLogger("reid_jax")

# Bytes per query x gallery element of a block: distances, the mask and top_k's temporaries.
_BYTES_PER_ELEMENT = 16
# Elements per block: beyond a few million, the passes after the matmul (mask, top_k) leave the
# caches. On the 2-core CPU, 1,000 queries x 100,000 gallery rank in about 1.4x the bare
# matmul's time with 1,000 x 3,000 blocks, 2.3x with 1,000 x 16,000 (bench/search.py).
_MAX_BLOCK_ELEMENTS = 3000000


@functools.partial(
  jax.jit, static_argnames=("k", "metric", "exclude_same_camera", "block", "num_blocks", "padded")
)
def _scan_gallery(
  best_d,
  best_i,
  queries,
  q_cams,
  gallery,
  g_cams,
  offset,
  num_gallery,
  *,
  k,
  metric,
  exclude_same_camera,
  block,
  num_blocks,
  padded,
):
  """Merges the k best of each of the first `num_blocks` blocks of `gallery` (its rows are
  gallery rows `offset`, ...) into the running `best_d`, `best_i` ([b, k]), in one program."""

  def merge(carry, b):
    best_d, best_i = carry
    start = b * block
    dist = pairwise_distances(queries, jax.lax.dynamic_slice_in_dim(gallery, start, block), metric)
    if padded:  # rows past the gallery's end
      dist = jnp.where(offset + start + jnp.arange(block) >= num_gallery, jnp.inf, dist)
    if exclude_same_camera:
      cams = jax.lax.dynamic_slice_in_dim(g_cams, start, block)
      dist = jnp.where(q_cams[:, None] == cams[None, :], jnp.inf, dist)
    neg, pos = jax.lax.top_k(-dist, k)
    # The running best come first: on equal distances top_k keeps them, i.e. gallery order.
    d = jnp.concatenate([best_d, -neg], axis=1)
    i = jnp.concatenate([best_i, offset + start + pos.astype(jnp.int32)], axis=1)
    neg, pos = jax.lax.top_k(-d, k)
    return (-neg, jnp.take_along_axis(i, pos, axis=1)), None

  (best_d, best_i), _ = jax.lax.scan(merge, (best_d, best_i), jnp.arange(num_blocks))
  return best_d, best_i


def _camera_codes(query_cameras, gallery_cameras):
  names = {c: n for n, c in enumerate(sorted(set(query_cameras) | set(gallery_cameras)))}
  code = lambda cams: np.array([names[c] for c in cams], np.int32)
  return code(query_cameras), code(gallery_cameras)


def block_shape(num_queries: int, num_gallery: int, k: int, block_bytes: int = BLOCK_BYTES):
  """(query rows, gallery rows) of one block: within the budget and the caches."""
  q_block = min(num_queries, 1024)
  budget = min(block_bytes // _BYTES_PER_ELEMENT, _MAX_BLOCK_ELEMENTS)
  return q_block, max(k, min(num_gallery, budget // q_block))


def top_k(
  query: np.ndarray,
  gallery: np.ndarray,
  k: int,
  *,
  metric: str = "euclidean",
  query_cameras=None,
  gallery_cameras=None,
  block_bytes: int = BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
  """`(distances [Q, k], indices [Q, k])` of the k nearest gallery items of each query, nearest
  first (ties in gallery order); with cameras given, pairs of one camera are left out, and a
  query with fewer than k candidates has index -1 and distance inf in the rest."""
  k = int(k)
  num_q, num_g = len(query), len(gallery)
  exclude = query_cameras is not None
  q_cams, g_cams = (
    _camera_codes(query_cameras, gallery_cameras)
    if exclude
    else (np.zeros(num_q, np.int32), np.zeros(num_g, np.int32))
  )
  # Fixed block shapes (two compiles: the gallery's whole blocks in one scan, then its padded
  # tail).
  q_block, g_block = block_shape(num_q, num_g, k, block_bytes)
  whole = num_g // g_block * g_block
  # Scanned in place: a device array (the mode's) is not copied, a host one is copied once.
  gallery = jnp.asarray(gallery, jnp.float32)
  g_cams_device = jnp.asarray(g_cams)
  parts = []
  if whole:
    parts.append((gallery, g_cams_device, 0, whole // g_block, False))
  if whole < num_g:
    tail = _pad(np.asarray(gallery[whole:]), g_block), _pad(g_cams[whole:], g_block)
    parts.append((*tail, whole, 1, True))
  out_d, out_i = [], []
  for q_start in range(0, num_q, q_block):
    queries = _pad(np.asarray(query[q_start : q_start + q_block], np.float32), q_block)
    cams = _pad(q_cams[q_start : q_start + q_block], q_block)
    best_d = jnp.full((q_block, k), jnp.inf, jnp.float32)
    best_i = jnp.full((q_block, k), -1, jnp.int32)
    for rows, row_cams, offset, num_blocks, padded in parts:
      best_d, best_i = _scan_gallery(
        best_d,
        best_i,
        queries,
        cams,
        rows,
        row_cams,
        np.int32(offset),
        np.int32(num_g),
        k=k,
        metric=metric,
        exclude_same_camera=exclude,
        block=g_block,
        num_blocks=num_blocks,
        padded=padded,
      )
    real = min(q_block, num_q - q_start)
    out_d.append(np.asarray(best_d)[:real])
    out_i.append(np.asarray(best_i)[:real])
  d, i = np.concatenate(out_d), np.concatenate(out_i)
  return d, np.where(np.isfinite(d), i, -1)


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
  return (
    np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)]) if len(x) < rows else x
  )


def search(config, workdir: str) -> dict:
  """`search` mode: `ranking.csv` (every query's top k) and `matches.csv` (cross-camera pairs
  under the threshold) in `config.search.output` (default `<workdir>/search`)."""
  from reid_jax.footage.embed import load_embeddings

  s = config.search
  query_path = s.query or os.path.join(workdir, "embeddings.npz")
  query = load_embeddings(query_path)
  same = not s.gallery or os.path.abspath(s.gallery) == os.path.abspath(query_path)
  gallery = query if same else load_embeddings(s.gallery)
  if query["features"].shape[1] != gallery["features"].shape[1]:
    raise ValueError(
      f"config.search.gallery: features of {gallery['features'].shape[1]} dimensions, the "
      f"queries' have {query['features'].shape[1]} (another model?)"
    )
  metric = config.eval.metric
  threshold, threshold_source = _threshold(s, workdir, metric)
  k = min(s.top_k, len(gallery["names"]))
  distances, indices = top_k(
    query["features"],
    gallery["features"],
    k,
    metric=metric,
    query_cameras=query["cameras"] if same else None,
    gallery_cameras=gallery["cameras"] if same else None,
  )
  output = s.output or os.path.join(workdir, "search")
  os.makedirs(output, exist_ok=True)
  ranking = os.path.join(output, "ranking.csv")
  matches = os.path.join(output, "matches.csv")
  num_matches = 0
  with open(ranking + ".tmp", "w", newline="") as r, open(matches + ".tmp", "w", newline="") as m:
    ranking_csv, matches_csv = csv.writer(r), csv.writer(m)
    ranking_csv.writerow(["query", "rank", "gallery", "camera", "distance", "decision"])
    matches_csv.writerow(["query", "query_camera", "gallery", "gallery_camera", "distance"])
    seen = set()
    for q in range(len(query["names"])):
      for rank, (d, g) in enumerate(zip(distances[q], indices[q]), start=1):
        if g < 0:
          break
        decision = _decision(d, threshold)
        ranking_csv.writerow(
          [
            query["names"][q],
            rank,
            gallery["names"][g],
            gallery["cameras"][g],
            f"{d:.6g}",
            decision,
          ]
        )
        pair = (min(q, g), max(q, g)) if same else (q, g)
        crossed = query["cameras"][q] != gallery["cameras"][g]
        if decision == "match" and crossed and pair not in seen:
          seen.add(pair)
          num_matches += 1
          matches_csv.writerow(
            [
              query["names"][q],
              query["cameras"][q],
              gallery["names"][g],
              gallery["cameras"][g],
              f"{d:.6g}",
            ]
          )
  os.replace(ranking + ".tmp", ranking)
  os.replace(matches + ".tmp", matches)
  sheets = _sheets(output, query, gallery, distances, indices, threshold, s.num_sheets)
  log.info(
    "Ranked %d queries against %d gallery tracklets (%s): %s; %s",
    len(query["names"]),
    len(gallery["names"]),
    metric,
    ranking,
    f"{num_matches} cross-camera matches under {threshold:.6g} ({threshold_source}) in {matches}"
    if threshold is not None
    else "no threshold (run calibrate mode, or set config.search.threshold): no matches listed",
  )
  return dict(
    ranking=ranking, matches=matches, num_matches=num_matches, threshold=threshold, sheets=sheets
  )


def _sheets(output, query, gallery, distances, indices, threshold, count) -> list[str]:
  """Ranked sheets of the first `count` queries, pictures from the embedded footage."""
  from reid_jax.footage import sheets as sheets_lib

  if not count:
    return []
  try:
    q_tracks, g_tracks = (
      sheets_lib.tracks_for(query["meta"]),
      sheets_lib.tracks_for(gallery["meta"]),
    )
  except (ValueError, OSError, KeyError) as e:
    log.warning("No ranked sheets: the embedded footage cannot be read again (%s)", e)
    return []
  written = []
  for q in range(min(count, len(query["names"]))):
    name = str(query["names"][q])
    results = []
    for d, g in zip(distances[q], indices[q]):
      if g < 0:
        break
      decision = _decision(d, threshold)
      g_name = str(gallery["names"][g])
      image = sheets_lib.middle_frame(g_tracks[g_name])
      results.append((g_name, str(gallery["cameras"][g]), float(d), decision, image))
    path = os.path.join(output, f"sheet_{q:04d}.png")
    query_picture = (name, str(query["cameras"][q]), sheets_lib.middle_frame(q_tracks[name]))
    written.append(sheets_lib.write_sheet(path, query_picture, results))
  log.info("Wrote %d ranked sheets to %s", len(written), output)
  return written


def _decision(distance: float, threshold: float | None) -> str:
  """The threshold's verdict on a pair ("" without a threshold)."""
  if threshold is None:
    return ""
  return "match" if distance <= threshold else "no match"


def _threshold(s, workdir: str, metric: str) -> tuple[float | None, str]:
  """`config.search.threshold` if set (>= 0), else calibrate mode's `threshold.json`."""
  if s.threshold >= 0:
    return float(s.threshold), "config.search.threshold"
  path = os.path.join(workdir, "threshold.json")
  if not os.path.isfile(path):
    return None, ""
  with open(path) as f:
    calibration = json.load(f)
  if calibration["metric"] != metric:
    raise ValueError(
      f"{path} is a threshold on {calibration['metric']} distances, but config.eval.metric is "
      f"{metric!r}"
    )
  return float(calibration["threshold"]), path
