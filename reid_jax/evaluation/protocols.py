"""Named evaluation protocols: which tracklets are queries, which are the gallery.

  mars                      the official MARS protocol (the dataset authors' MATLAB code): the
                            gallery is every test tracklet, queries included; the query itself
                            is junk (same pid and camera), as are pid -1 tracklets; pid 0
                            distractors are ordinary negatives.
  mars_no_query_in_gallery  the common PyTorch practice: queries removed from the gallery, so
                            about 140 queries lose their only true matches and are skipped.
                            Not comparable with `mars`.
  duke                      DukeMTMC-VideoReID: query tracklets against gallery tracklets.
  ilidsvid, prid2011        per person split s (10 of them): the test people of split s seen by
                            camera 1 (cam1 / cam_a) are the queries, the same people seen by
                            camera 2 (cam2 / cam_b) the gallery; mean and std over the splits.
The standard rule of `ranking` (same pid + same camera junk, pid -1 junk, queries without a
match skipped, ties in gallery order) applies in every protocol.
"""

import logging

import numpy as np

from reid_jax.evaluation.ranking import evaluate

PROTOCOLS = ("mars", "mars_no_query_in_gallery", "duke", "ilidsvid", "prid2011")
SPLIT_PROTOCOLS = ("ilidsvid", "prid2011")
NUM_SPLITS = 10
# Camera ids are 1-based in the TrackletTable; camera 1 (cam1 / cam_a) is the query side.
QUERY_CAMERA = 1
REPORTED_RANKS = (1, 5, 10, 20)
# What every result holds, printed, logged and reported: CMC at REPORTED_RANKS, mAP, mINP.
REPORTED_METRICS = (*(f"rank{k}" for k in REPORTED_RANKS), "mAP", "mINP")


def protocol_sets(name: str, table, split: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (into the TrackletTable) of the queries and of the gallery."""
  rows = np.arange(len(table.pids))
  is_query = np.asarray(table.is_query, bool)
  if name == "mars":
    return rows[is_query], rows
  if name in ("mars_no_query_in_gallery", "duke"):
    return rows[is_query], rows[~is_query]
  if name in SPLIT_PROTOCOLS:
    if table.person_split_role is None:
      raise ValueError(f"protocol {name!r} needs person_split_role in the table")
    test = np.asarray(table.person_split_role)[:, split] == 1
    query_camera = np.asarray(table.camids) == QUERY_CAMERA
    return rows[test & query_camera], rows[test & ~query_camera]
  raise ValueError(f"unknown protocol {name!r}; choose one of {PROTOCOLS}")


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
    name: one of PROTOCOLS.
    features: [N, D] features of the table's rows. For ilidsvid/prid2011, either one array used
      for every split, or a sequence of NUM_SPLITS arrays (features[s] from the model trained on
      split s), which is what the published mean over splits means.
    table: the TrackletTable of the evaluation set.
    metric, rerank, max_rank: as in `evaluate`.
    splits: ilidsvid/prid2011 only: the splits to score (default all 10).
  Returns:
    dict with `protocol`, `metric`, `rerank`, rank1/5/10/20, mAP, mINP (fractions in [0, 1]),
    `cmc` [max_rank], set sizes; for the split protocols these are means over the splits, with
    `<key>_std` (population std), `splits` and the per-split numbers in `per_split`.
  """
  header = dict(protocol=name, metric=metric, rerank=bool(rerank))
  if name not in SPLIT_PROTOCOLS:
    features = np.asarray(features)
    queries, gallery = protocol_sets(name, table)
    return {**header, **_scores(features, table, queries, gallery, metric, rerank, max_rank)}

  per_model = not (isinstance(features, np.ndarray) or hasattr(features, "shape"))
  splits = list(range(NUM_SPLITS) if splits is None else splits)
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
