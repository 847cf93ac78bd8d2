"""`calibrate` mode: which distance means "same person", measured on a labelled dataset.

On the evaluation tracklets of a converted dataset (any benchmark converter, or the synthetic
one), every pair of tracklets from different cameras is a same-person pair or a different-person
pair (tracklets whose pid is not a person, such as MARS's junk and distractors, are left out).
Their distances are histogrammed on device in blocks (4,096 bins from 0 to the largest distance,
so memory does not grow with the number of pairs), and from the two histograms come:
- the threshold at the chosen false-match rate (the share of different-person pairs at or under
  it), and the true-match rate there;
- the equal error rate (EER), where the false-match and false-non-match rates meet;
written to `threshold.json` (which `search` and `export` read through `read_threshold`),
`pairs.png` and `roc.png`. The threshold is exact to one bin width (reported as `resolution`).
It works on any labelled dataset with the trained model, whatever its number of identities; it
warns when the threshold rests on few pairs (`FEW_PAIRS`, `FEW_PAIRS_UNDER`), and keeps the previous
`threshold.json` beside the new one (`threshold-<its time>.json`). The file records the metric
and the model's fingerprint, which `search` checks against the embeddings'.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from data_prep.errors import UserError
from data_prep.files import atomic_write, check_writable
from reid_jax.distances import pairwise_distances
from reid_jax.retrieval import BLOCK_BYTES, block_shape

log = logging.getLogger("reid_jax")

BINS = 4096
THRESHOLD_FILE = "threshold.json"
# Below this many same-person pairs, or this many different-person pairs under the threshold, the
# rates the threshold is chosen by rest on too few pairs to hold on other footage: the log says so.
FEW_PAIRS = 300
FEW_PAIRS_UNDER = 30


class ThresholdMismatch(UserError, ValueError):
  """A `threshold.json` that does not apply: measured on another metric's distances."""


class TooFewPairs(UserError, ValueError):
  """The labelled tracklets lack same-person or different-person cross-camera pairs."""


def read_threshold(workdir: str, metric: str) -> dict | None:
  """`<workdir>/threshold.json` as `calibrate` wrote it, or None when there is none.

  Raises:
    ThresholdMismatch: it is a threshold on another metric's distances than `metric`.
  """
  path = os.path.join(workdir, THRESHOLD_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    calibration = json.load(f)
  if calibration.get("metric") != metric:
    raise ThresholdMismatch(
      f"{path} is a threshold on {calibration.get('metric')} distances, but config.eval.metric "
      f"is {metric!r}: calibrate again, or set config.eval.metric"
    )
  calibration["path"] = path
  return calibration


@functools.partial(jax.jit, static_argnames=("metric",))
def _block_max(rows, features, rows_cams, cams, valid_rows, *, metric):
  dist = pairwise_distances(rows, features, metric)
  keep = valid_rows[:, None] & (rows_cams[:, None] != cams[None, :])
  return jnp.max(jnp.where(keep, dist, 0.0))


@functools.partial(jax.jit, static_argnames=("metric",))
def _block_histograms(rows, features, rows_pids, pids, rows_cams, cams, index, top, *, metric):
  dist = pairwise_distances(rows, features, metric)
  # Each unordered pair once (row < column); padding rows have index n.
  later = index[:, None] < jnp.arange(features.shape[0])[None, :]
  keep = later & (rows_cams[:, None] != cams[None, :])
  same = rows_pids[:, None] == pids[None, :]
  bins = jnp.clip(jnp.floor(dist / top * BINS), 0, BINS - 1).astype(jnp.int32)
  count = lambda mask: jax.ops.segment_sum(
    mask.reshape(-1).astype(jnp.int32), bins.reshape(-1), BINS
  )
  return count(keep & same), count(keep & ~same)


def pair_histograms(
  features, pids, cameras, *, metric="euclidean", block_bytes=BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(bin edges [BINS + 1], same-person counts [BINS], different-person counts [BINS])` of the
  cross-camera pairs (each unordered pair once)."""
  features = jnp.asarray(np.asarray(features, np.float32))
  pids = jnp.asarray(np.asarray(pids, np.int64).astype(np.int32))
  cameras = jnp.asarray(np.asarray(cameras).astype(np.int32))
  n = features.shape[0]
  block = min(block_shape(n, n, budget=block_bytes, multiple_of=1)[0], n)

  def blocks():
    for start in range(0, n, block):
      index = np.arange(start, start + block)
      rows = np.minimum(index, n - 1)
      yield features[rows], pids[rows], cameras[rows], jnp.asarray(np.minimum(index, n))

  top = 0.0
  for rows, _, rows_cams, index in blocks():
    valid = index < n
    top = max(top, float(_block_max(rows, features, rows_cams, cameras, valid, metric=metric)))
  top = top or 1.0
  same = np.zeros(BINS, np.int64)
  different = np.zeros(BINS, np.int64)
  for rows, rows_pids, rows_cams, index in blocks():
    s, d = _block_histograms(
      rows, features, rows_pids, pids, rows_cams, cameras, index, top, metric=metric
    )
    same += np.asarray(s)
    different += np.asarray(d)
  return np.linspace(0.0, top, BINS + 1), same, different


def operating_points(edges, same, different, false_match_rate: float) -> dict:
  """Threshold, true-match rate and EER from the pair histograms."""
  if not same.sum() or not different.sum():
    raise TooFewPairs(
      f"need same-person and different-person cross-camera pairs, got {int(same.sum())} and "
      f"{int(different.sum())}"
    )
  fmr = np.cumsum(different) / different.sum()  # pairs at or under edges[b + 1]
  tmr = np.cumsum(same) / same.sum()
  under = np.flatnonzero(fmr <= false_match_rate)
  b = int(under[-1]) if len(under) else -1
  threshold = float(edges[b + 1]) if b >= 0 else 0.0
  eer_bin = int(np.argmin(np.abs(fmr - (1.0 - tmr))))
  return dict(
    threshold=threshold,
    false_match_rate=float(fmr[b]) if b >= 0 else 0.0,
    target_false_match_rate=false_match_rate,
    true_match_rate=float(tmr[b]) if b >= 0 else 0.0,
    eer=float((fmr[eer_bin] + 1.0 - tmr[eer_bin]) / 2),
    eer_threshold=float(edges[eer_bin + 1]),
    resolution=float(edges[1] - edges[0]),
    same_person_pairs=int(same.sum()),
    different_person_pairs=int(different.sum()),
  )


def _few_pairs(points: dict) -> list[str]:
  """What the threshold's figures rest on, when it is little."""
  warnings = []
  if points["same_person_pairs"] < FEW_PAIRS:
    warnings.append(
      f"the true-match rate rests on {points['same_person_pairs']} same-person pairs (fewer than "
      f"{FEW_PAIRS}): it may not hold on other footage"
    )
  under = int(round(points["false_match_rate"] * points["different_person_pairs"]))
  if under < FEW_PAIRS_UNDER:
    warnings.append(
      f"the threshold rests on {under} different-person pairs under it (of "
      f"{points['different_person_pairs']}): its false-match rate may not hold on other footage"
    )
  return warnings


def _keep_previous(path: str) -> str | None:
  """Renames an existing `threshold.json` to `threshold-<its modification time>.json` (never
  over another); returns the new name."""
  if not os.path.exists(path):
    return None
  stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
  stem, ext = os.path.splitext(path)
  target, n = f"{stem}-{stamp}{ext}", 1
  while os.path.exists(target):
    target, n = f"{stem}-{stamp}-{n}{ext}", n + 1
  os.replace(path, target)
  return target


def plot(workdir: str, edges, same, different, points: dict, metric: str) -> None:
  from reid_jax.evaluation.report import plt, save_figure

  centres = (edges[:-1] + edges[1:]) / 2
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for counts, label in ((same, "same person"), (different, "different people")):
    ax.plot(centres, counts / counts.sum(), label=f"{label} ({counts.sum():,} pairs)")
  ax.axvline(points["threshold"], color="k", linestyle="--", label="threshold")
  ax.set(xlabel=f"{metric} distance", ylabel="share of pairs per bin", title="Cross-camera pairs")
  ax.legend()
  fig.tight_layout()
  save_figure(fig, os.path.join(workdir, "pairs.png"))
  fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
  fmr = np.cumsum(different) / different.sum()
  tmr = np.cumsum(same) / same.sum()
  ax.plot(np.maximum(fmr, 1e-6), tmr)
  ax.plot(points["false_match_rate"] or 1e-6, points["true_match_rate"], "o", label="threshold")
  ax.set(xscale="log", xlabel="false-match rate", ylabel="true-match rate", title="ROC")
  ax.set_xlim(1e-5, 1)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, os.path.join(workdir, "roc.png"))


def run(config, workdir: str) -> dict:
  """`calibrate` mode: restores the checkpoint, embeds the configured dataset's evaluation
  tracklets and writes `threshold.json`, `pairs.png` and `roc.png` into `workdir`."""
  from data_prep import datasets
  from reid_jax import config as config_lib
  from reid_jax.data.tracklets import BuiltTracklets
  from reid_jax.inference import features as features_lib
  from reid_jax.inference import model as model_lib

  checkpoint = model_lib.find_checkpoint(config, workdir)
  source = BuiltTracklets(config_lib.data_dir(config, workdir), config.dataset.name)
  check_writable(os.path.join(workdir, THRESHOLD_FILE))
  model = model_lib.restore(config, workdir, checkpoint=checkpoint)
  features = features_lib.tracklet_features(model, source, config.data)
  table = source.table
  people = ~np.isin(table.pids, datasets.get(config.dataset.name).non_identity_pids)
  metric = config.eval.metric
  edges, same, different = pair_histograms(
    features[people], table.pids[people], table.camids[people], metric=metric
  )
  points = operating_points(edges, same, different, config.calibrate.false_match_rate)
  result = dict(
    metric=metric,
    step=model.step,
    fingerprint=model.fingerprint,
    dataset=config.dataset.name,
    **points,
    warnings=_few_pairs(points),
  )
  for warning in result["warnings"]:
    log.warning("%s", warning)
  if jax.process_index() == 0:
    path = os.path.join(workdir, THRESHOLD_FILE)
    kept = _keep_previous(path)
    with atomic_write(path) as f:
      json.dump(result, f, indent=1)
    if kept:
      log.info("Kept the previous threshold as %s", kept)
    plot(workdir, edges, same, different, points, metric)
    log.info(
      "Threshold %.4g (%s): false-match rate %.4f, true-match rate %.4f; EER %.4f at %.4g "
      "(%d same-person and %d different-person cross-camera pairs of %s): %s",
      result["threshold"],
      metric,
      result["false_match_rate"],
      result["true_match_rate"],
      result["eer"],
      result["eer_threshold"],
      result["same_person_pairs"],
      result["different_person_pairs"],
      config.dataset.name,
      path,
    )
  return result
