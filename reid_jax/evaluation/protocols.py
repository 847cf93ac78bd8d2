"""Evaluation protocols: which tracklets are queries, which are the gallery.

Protocols are declared by the dataset modules (`data_prep.datasets`, e.g. `mars` and
`mars_no_query_in_gallery` in `data_prep.datasets.mars`) and found here by name. Queries are the
tracklets flagged as queries; the gallery is every tracklet or the others; with person splits
both are the test people of one split, and results are means over the splits. The standard rule
of `ranking` (same pid + same camera junk, pid -1 junk, queries without a match skipped, ties in
gallery order) applies in every protocol.
"""

import logging

import numpy as np

from data_prep import datasets
from reid_jax.evaluation.ranking import evaluate

REPORTED_RANKS = (1, 5, 10, 20)
# What every result holds, printed, logged and reported: CMC at REPORTED_RANKS, mAP, mINP.
REPORTED_METRICS = (*(f"rank{k}" for k in REPORTED_RANKS), "mAP", "mINP")


def format_metrics(results: dict) -> str:
  """`rank-1 84.30%  rank-5 ...  mAP 77.00%  mINP ...`, with `(std ...)` for split means."""
  parts = []
  for key in REPORTED_METRICS:
    name = key.replace("rank", "rank-")
    std = f" (std {100 * results[key + '_std']:.2f})" if key + "_std" in results else ""
    parts.append(f"{name} {100 * results[key]:.2f}%{std}")
  return "  ".join(parts)


def protocol_sets(name: str, table, split: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (into the TrackletTable) of the queries and of the gallery."""
  protocol = datasets.protocol(name)
  rows = np.arange(len(table.pids))
  is_query = np.asarray(table.is_query, bool)
  keep = np.ones(len(rows), bool)
  if protocol.person_splits:
    if table.person_split_role is None:
      raise ValueError(f"protocol {name!r} needs person_split_role in the table")
    keep = np.asarray(table.person_split_role)[:, split] == 1
  gallery = keep if protocol.queries_in_gallery else keep & ~is_query
  return rows[is_query & keep], rows[gallery]


def _scores(features, table, queries, gallery, metric, rerank, max_rank) -> dict:
  pids, camids = np.asarray(table.pids), np.asarray(table.camids)
  result = evaluate(
    features[queries],
    features[gallery],
    pids[queries],
    pids[gallery],
    camids[queries],
    camids[gallery],
    metric=metric,
    max_rank=max_rank,
    rerank=rerank,
  )
  scores = {
    f"rank{k}": float(result["cmc"][min(k, len(result["cmc"])) - 1]) for k in REPORTED_RANKS
  }
  scores.update(
    mAP=result["mAP"],
    mINP=result["mINP"],
    cmc=result["cmc"],
    num_queries=len(queries),
    num_gallery=len(gallery),
    num_valid_queries=result["num_valid_queries"],
  )
  return scores


def run_protocol(
  name: str,
  features,
  table,
  *,
  metric: str = "euclidean",
  rerank: bool = False,
  max_rank: int = 50,
  splits=None,
) -> dict:
  """Scores features under a named protocol.

  Args:
    name: a protocol of `data_prep.datasets`.
    features: [N, D] features of the table's rows. With person splits, either one array used
      for every split, or a sequence of one array per split (features[s] from the model trained
      on split s), which is what the published mean over splits means.
    table: the TrackletTable of the evaluation set.
    metric, rerank, max_rank: as in `evaluate`.
    splits: person-split protocols only: the splits to score (default all).
  Returns:
    dict with `protocol`, `metric`, `rerank`, rank1/5/10/20, mAP, mINP (fractions in [0, 1]),
    `cmc` [max_rank], set sizes; for the split protocols these are means over the splits, with
    `<key>_std` (population std), `splits` and the per-split numbers in `per_split`.
  """
  header = dict(protocol=name, metric=metric, rerank=bool(rerank))
  if not datasets.protocol(name).person_splits:
    features = np.asarray(features)
    queries, gallery = protocol_sets(name, table)
    return {**header, **_scores(features, table, queries, gallery, metric, rerank, max_rank)}

  per_model = not (isinstance(features, np.ndarray) or hasattr(features, "shape"))
  if splits is None:
    splits = range(np.shape(table.person_split_role)[1])
  splits = list(splits)
  if not per_model and len(splits) > 1:
    logging.warning(
      "%s: one model scored on %d splits; its training people are test people "
      "of other splits, so only its own split is a fair number",
      name,
      len(splits),
    )
  per_split = []
  for s in splits:
    split_features = np.asarray(features[s] if per_model else features)
    queries, gallery = protocol_sets(name, table, s)
    per_split.append(_scores(split_features, table, queries, gallery, metric, rerank, max_rank))
  result = {
    **header,
    "splits": splits,
    "per_split": [{k: v for k, v in r.items() if k != "cmc"} for r in per_split],
  }
  for key in REPORTED_METRICS:
    values = np.array([r[key] for r in per_split], np.float64)
    result[key], result[f"{key}_std"] = float(values.mean()), float(values.std())
  for key in ("num_queries", "num_gallery", "num_valid_queries"):
    result[key] = float(np.mean([r[key] for r in per_split]))
  result["cmc"] = np.mean([r["cmc"] for r in per_split], axis=0)
  return result
