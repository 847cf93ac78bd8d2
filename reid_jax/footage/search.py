"""`search` mode: the nearest gallery tracklets of every query tracklet, and every match.

Which pairs are compared: every pair but a tracklet with itself (whatever file each comes from),
and two tracks of one video that overlap in time (one person is not twice in one picture). Two
tracklets of one camera otherwise are compared (the same person passing again) and marked
`same_camera` in the outputs; `search.cross_camera_only` leaves them out too. Tracklet folders
carry no time: their same-camera pairs are compared and marked.

The top k is `reid_jax.retrieval.top_k` (exact, the gallery sharded over every device of the
run); `matches.csv` holds every pair under the threshold (`retrieval.within`), whatever the top k.
Query, gallery and threshold must come from one model (the weights' fingerprint each file
records) and the threshold from the configured metric; a tracklet whose feature is not finite is
an error naming it. Outputs, in `config.search.output` (default `<workdir>/search`):
`ranking.csv`, `matches.csv` and ranked sheets of the first queries (`reid_jax.ranked_sheets`,
pictures from the embedded footage). Every process takes part in the search; process 0 writes.
"""

from __future__ import annotations

import csv
import logging
import os

import jax
import numpy as np

from data_prep.errors import UserError
from data_prep.files import atomic_write, check_writable
from reid_jax import ranked_sheets, retrieval
from reid_jax.evaluation.calibrate import ThresholdMismatch, read_threshold
from reid_jax.footage.embed import load_embeddings

log = logging.getLogger("reid_jax")


class EmbeddingsMismatch(UserError, ValueError):
  """Query and gallery embeddings that cannot be ranked together."""


def _excluded(q: dict, g: dict):
  """A tracklet with itself; two tracks of one video that overlap in time."""
  overlap = (q["start"] <= g["end"]) & (g["start"] <= q["end"])
  return (q["key"] == g["key"]) | ((q["video"] == g["video"]) & (q["video"] >= 0) & overlap)


def _excluded_cross_camera_only(q: dict, g: dict):
  """A tracklet with itself, and every pair of one camera."""
  return (q["key"] == g["key"]) | (q["camera"] == g["camera"])


def _labels(query: dict, gallery: dict) -> tuple[dict, dict]:
  """The numbers the exclusion rules read, in one numbering for both files."""
  keys = retrieval.group_codes(
    [f"{s}\0{n}" for s, n in zip(query["sources"], query["names"])],
    [f"{s}\0{n}" for s, n in zip(gallery["sources"], gallery["names"])],
  )
  cameras = retrieval.group_codes(query["cameras"], gallery["cameras"])
  videos = retrieval.group_codes(query["sources"], gallery["sources"])
  labels = []
  for e, key, camera, video in zip((query, gallery), keys, cameras, videos):
    labels.append(
      dict(
        key=key,
        camera=camera,
        video=np.where(e["timed"], video, -1).astype(np.int32),
        start=e["first_frame"].astype(np.int32),
        end=e["last_frame"].astype(np.int32),
      )
    )
  return labels[0], labels[1]


def _check(query_path: str, query: dict, gallery_path: str, gallery: dict) -> None:
  if query["features"].shape[1] != gallery["features"].shape[1]:
    raise EmbeddingsMismatch(
      f"config.search.gallery: {gallery_path} has features of {gallery['features'].shape[1]} "
      f"dimensions, {query_path} of {query['features'].shape[1]} (another model?)"
    )
  if query["meta"]["fingerprint"] != gallery["meta"]["fingerprint"]:
    raise EmbeddingsMismatch(
      f"{query_path} and {gallery_path} were embedded by different models (checkpoint steps "
      f"{query['meta']['step']} and {gallery['meta']['step']}, fingerprints "
      f"{query['meta']['fingerprint']} and {gallery['meta']['fingerprint']}): embed both with one"
    )
  for path, e in ((query_path, query), (gallery_path, gallery)):
    bad = np.flatnonzero(~np.isfinite(e["features"]).all(axis=1))
    if len(bad):
      raise EmbeddingsMismatch(
        f"{path}: the feature of {e['names'][bad[0]]} is not finite"
        + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
      )


def _threshold(s, workdir: str, metric: str, fingerprint: str) -> tuple[float | None, str]:
  """`config.search.threshold` if set (>= 0), else calibrate mode's `threshold.json`, which must
  have been measured with the embeddings' model."""
  if s.threshold >= 0:
    return float(s.threshold), "config.search.threshold"
  calibration = read_threshold(workdir, metric)
  if calibration is None:
    return None, ""
  if calibration.get("fingerprint") != fingerprint:
    raise ThresholdMismatch(
      f"{calibration['path']} was measured with another model (checkpoint step "
      f"{calibration.get('step')}) than the embeddings: calibrate with theirs, or set "
      "config.search.threshold"
    )
  return float(calibration["threshold"]), calibration["path"]


def _decision(distance: float, threshold: float | None) -> str:
  """The threshold's verdict on a pair ("" without a threshold)."""
  if threshold is None:
    return ""
  return "match" if distance <= threshold else "no match"


def run(config, workdir: str) -> dict:
  """`search` mode: `ranking.csv` (every query's top k), `matches.csv` (every pair under the
  threshold) and ranked sheets."""
  s = config.search
  query_path = s.query or os.path.join(workdir, "embeddings.npz")
  gallery_path = s.gallery or query_path
  query = load_embeddings(query_path)
  same_file = os.path.abspath(gallery_path) == os.path.abspath(query_path)
  gallery = query if same_file else load_embeddings(gallery_path)
  _check(query_path, query, gallery_path, gallery)
  metric = config.eval.metric
  threshold, threshold_source = _threshold(s, workdir, metric, query["meta"]["fingerprint"])
  output = s.output or os.path.join(workdir, "search")
  ranking, matches = os.path.join(output, "ranking.csv"), os.path.join(output, "matches.csv")
  check_writable(ranking)
  q_labels, g_labels = _labels(query, gallery)
  exclude = _excluded_cross_camera_only if s.cross_camera_only else _excluded
  rule = dict(exclude=exclude, query_labels=q_labels, gallery_labels=g_labels)
  distances, indices = retrieval.top_k(
    query["features"],
    gallery["features"],
    min(s.top_k, len(gallery["names"])),
    metric=metric,
    **rule,
  )
  pairs = (
    retrieval.within(query["features"], gallery["features"], threshold, metric=metric, **rule)
    if threshold is not None
    else None
  )
  result = dict(ranking=ranking, matches=matches, threshold=threshold, sheets=[])
  if jax.process_index() != 0:
    return result
  same_camera = lambda q, g: "yes" if query["cameras"][q] == gallery["cameras"][g] else "no"
  with atomic_write(ranking) as f:
    out = csv.writer(f)
    out.writerow(["query", "rank", "gallery", "camera", "same_camera", "distance", "decision"])
    for q in range(len(query["names"])):
      for rank, (d, g) in enumerate(zip(distances[q], indices[q]), start=1):
        if g >= 0:
          out.writerow(
            [
              query["names"][q],
              rank,
              gallery["names"][g],
              gallery["cameras"][g],
              same_camera(q, g),
              f"{d:.6g}",
              _decision(d, threshold),
            ]
          )
  num_matches = 0
  with atomic_write(matches) as f:
    out = csv.writer(f)
    out.writerow(["query", "query_camera", "gallery", "gallery_camera", "same_camera", "distance"])
    seen = set()
    for q, g, d in zip(*pairs) if pairs is not None else ():
      pair = frozenset((int(q_labels["key"][q]), int(g_labels["key"][g])))
      if pair in seen:  # the pair seen from its other side (a file searched against itself)
        continue
      seen.add(pair)
      num_matches += 1
      out.writerow(
        [
          query["names"][q],
          query["cameras"][q],
          gallery["names"][g],
          gallery["cameras"][g],
          same_camera(q, g),
          f"{d:.6g}",
        ]
      )
  result.update(
    num_matches=num_matches,
    sheets=_sheets(output, query, gallery, distances, indices, threshold, s.num_sheets),
  )
  log.info(
    "Ranked %d queries against %d gallery tracklets (%s%s): %s; %s",
    len(query["names"]),
    len(gallery["names"]),
    metric,
    ", cross-camera pairs only" if s.cross_camera_only else "",
    ranking,
    f"{num_matches} matches under {threshold:.6g} ({threshold_source}) in {matches}"
    if threshold is not None
    else "no threshold (run calibrate mode, or set config.search.threshold): no matches listed",
  )
  return result


def footage_of(meta: dict):
  """`(FootageTracklets, {name: row})` of the footage an embeddings file was made from, found
  again from the input its `meta` recorded."""
  from reid_jax.footage.sources import FootageTracklets, discover

  tracks, _ = discover(
    meta["input"],
    tracks=meta.get("tracks", ""),
    skip_bad=meta.get("skip_bad", False),
    min_visibility=meta.get("min_visibility", 0.0),
    damaged={v: (f, "found while embedding") for v, f in meta.get("damaged", {}).items()},
  )
  return FootageTracklets(tracks), {t.name: row for row, t in enumerate(tracks)}


def _sheets(output, query, gallery, distances, indices, threshold, count) -> list[str]:
  """Ranked sheets of the first `count` queries, pictures from the embedded footage."""
  if not count:
    return []
  try:
    q_source, q_rows = footage_of(query["meta"])
    # One embedding of one footage (a file searched against itself): read it once.
    same = gallery["meta"] == query["meta"]
    g_source, g_rows = (q_source, q_rows) if same else footage_of(gallery["meta"])
  except (UserError, OSError, KeyError) as e:
    log.warning("No ranked sheets: the embedded footage cannot be read again (%s)", e)
    return []
  shown = ranked_sheets.FRAMES_SHOWN
  written = []
  for q in range(min(count, len(query["names"]))):
    name = str(query["names"][q])
    rows = [
      ranked_sheets.Row(
        q_source.frames(q_rows[name], shown), f"query  {name}  {query['cameras'][q]}"
      )
    ]
    for rank, (d, g) in enumerate(zip(distances[q], indices[q]), start=1):
      if g < 0:
        break
      g_name = str(gallery["names"][g])
      decision = _decision(d, threshold)
      rows.append(
        ranked_sheets.Row(
          g_source.frames(g_rows[g_name], shown),
          f"#{rank}  {g_name}  {gallery['cameras'][g]}  d={d:.3g}",
          verdict=None if not decision else decision == "match",
        )
      )
    written.append(ranked_sheets.write(os.path.join(output, f"sheet_{q:04d}.png"), rows))
  log.info("Wrote %d ranked sheets to %s", len(written), output)
  return written
