"""`search` mode: the nearest gallery tracklets of every query tracklet, and the matches.

The top k is `reid_jax.retrieval.top_k`: exact, on device, the gallery sharded over every device
of the run and scanned in blocks of fixed size, so its size only changes the time. When the query
and gallery files are the same, a tracklet is never compared with its own camera (itself
included): those pairs are what the tracker already links. Outputs, in `config.search.output`
(default `<workdir>/search`): `ranking.csv`, `matches.csv` and ranked sheets of the first queries
(`reid_jax.ranked_sheets`, pictures from the embedded footage).
"""

from __future__ import annotations

import csv
import logging
import os

import jax

from data_prep.errors import UserError
from data_prep.files import atomic_write
from reid_jax import ranked_sheets, retrieval
from reid_jax.evaluation.calibrate import read_threshold
from reid_jax.footage.embed import load_embeddings

log = logging.getLogger("reid_jax")


class EmbeddingsMismatch(UserError, ValueError):
  """Query and gallery embeddings that cannot be ranked together."""


def _decision(distance: float, threshold: float | None) -> str:
  """The threshold's verdict on a pair ("" without a threshold)."""
  if threshold is None:
    return ""
  return "match" if distance <= threshold else "no match"


def _threshold(s, workdir: str, metric: str) -> tuple[float | None, str]:
  """`config.search.threshold` if set (>= 0), else calibrate mode's `threshold.json`."""
  if s.threshold >= 0:
    return float(s.threshold), "config.search.threshold"
  calibration = read_threshold(workdir, metric)
  if calibration is None:
    return None, ""
  return float(calibration["threshold"]), calibration["path"]


def run(config, workdir: str) -> dict:
  """`search` mode: `ranking.csv` (every query's top k) and `matches.csv` (cross-camera pairs
  under the threshold), and ranked sheets. Every process takes part in the top k; process 0
  writes."""
  s = config.search
  query_path = s.query or os.path.join(workdir, "embeddings.npz")
  query = load_embeddings(query_path)
  same = not s.gallery or os.path.abspath(s.gallery) == os.path.abspath(query_path)
  gallery = query if same else load_embeddings(s.gallery)
  if query["features"].shape[1] != gallery["features"].shape[1]:
    raise EmbeddingsMismatch(
      f"config.search.gallery: features of {gallery['features'].shape[1]} dimensions, the "
      f"queries' have {query['features'].shape[1]} (another model?)"
    )
  metric = config.eval.metric
  threshold, threshold_source = _threshold(s, workdir, metric)
  groups = retrieval.group_codes(query["cameras"], gallery["cameras"]) if same else (None, None)
  distances, indices = retrieval.top_k(
    query["features"],
    gallery["features"],
    min(s.top_k, len(gallery["names"])),
    metric=metric,
    query_groups=groups[0],
    gallery_groups=groups[1],
  )
  output = s.output or os.path.join(workdir, "search")
  ranking = os.path.join(output, "ranking.csv")
  matches = os.path.join(output, "matches.csv")
  result = dict(ranking=ranking, matches=matches, threshold=threshold, sheets=[])
  if jax.process_index() != 0:
    return result
  num_matches = 0
  with atomic_write(ranking) as r, atomic_write(matches) as m:
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
  result.update(
    num_matches=num_matches,
    sheets=_sheets(output, query, gallery, distances, indices, threshold, s.num_sheets),
  )
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
  return result


def footage_of(meta: dict):
  """`(FootageTracklets, {name: row})` of the footage an embeddings file was made from, found
  again from the input its `meta` recorded."""
  from reid_jax.footage.sources import FootageTracklets, discover

  tracks, _ = discover(
    meta["input"], tracks=meta.get("tracks", ""), skip_bad=meta.get("skip_bad", False)
  )
  return FootageTracklets(tracks), {t.name: row for row, t in enumerate(tracks)}


def _sheets(output, query, gallery, distances, indices, threshold, count) -> list[str]:
  """Ranked sheets of the first `count` queries, pictures from the embedded footage."""
  if not count:
    return []
  try:
    q_source, q_rows = footage_of(query["meta"])
    g_source, g_rows = footage_of(gallery["meta"])
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
