"""Evaluation of a model on a built dataset's evaluation set, and the `eval` and `extract` modes.

`evaluate` takes an `InferenceModel` (restored from a checkpoint, or the trainer's live weights)
and the evaluation set as a chunk-stream source: per-tracklet features, the configured
protocol's numbers, and (with a workdir) the report. Every process runs it; process 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import numpy as np

from data_prep import datasets
from data_prep.errors import UserError
from data_prep.files import atomic_write, check_writable
from reid_jax import config as config_lib
from reid_jax.data.tracklets import BuiltTracklets, TrackletTable
from reid_jax.evaluation.protocols import format_metrics, run_protocol
from reid_jax.evaluation.report import write_report
from reid_jax.inference import features as features_lib
from reid_jax.inference import model as model_lib

log = logging.getLogger("reid_jax")


class SplitFeaturesError(UserError, ValueError):
  """`config.eval.split_features` lists files that cannot be scored together."""


class MissingSplitFeatures(UserError, FileNotFoundError):
  """A file listed in `config.eval.split_features` does not exist."""


def _score(config, name: str, features, table, splits) -> dict:
  """`run_protocol` with the evaluation settings of `config.eval`."""
  return run_protocol(
    name,
    features,
    table,
    metric=config.eval.metric,
    rerank=config.eval.rerank,
    max_rank=config.eval.max_rank,
    splits=splits,
  )


def evaluate(
  model: model_lib.InferenceModel, config, source: BuiltTracklets, workdir: str | None
) -> tuple[dict, np.ndarray]:
  """Features of every tracklet of `source`, the configured protocol's numbers and (with
  `workdir`) the report. Returns the results and the `[N, D]` features."""
  start = time.time()
  features = features_lib.tracklet_features(model, source, config.data)
  extract_seconds = time.time() - start
  name = config_lib.protocol(config)
  # A model trained on one person split is scored on that split only: the test people of the
  # other splits were its training people. `score_split_features` averages 10 models' splits.
  splits = [config.dataset.split_index] if datasets.protocol(name).person_splits else None
  results = _score(config, name, features, source.table, splits)
  results["step"] = model.step
  log.info(
    "Step %d, protocol %s: %s  (features in %.1fs)",
    model.step,
    results["protocol"],
    format_metrics(results),
    extract_seconds,
  )
  if workdir is not None:
    d = config.data
    frames_fn = lambda row: source.frames(row, d.height, d.width)
    write_report(
      workdir,
      results,
      features=features,
      table=source.table,
      frames_fn=frames_fn,
      attention_fn=attention_fn(model, d.num_frames, frames_fn),
      metric=config.eval.metric,
      num_queries=config.eval.num_ranked_queries,
      top_k=config.eval.top_k,
    )
  return results, features


def attention_fn(model: model_lib.InferenceModel, num_frames: int, frames_fn):
  """For non-local 3D models: `tracklet row -> (clip, attention dicts)` of its first chunk, its
  frames from `frames_fn` (those of the ranked sheets, as the chunk stream decodes them)."""
  if not model.arch.nonlocal_stages or not model.arch.inflate:
    return None

  def attention(row: int):
    frames = frames_fn(row)
    clip = (
      np.resize(frames, (num_frames,) + frames.shape[1:])
      if len(frames) < num_frames
      else frames[:num_frames]
    )
    return clip, model.attention(clip)

  return attention


def _restore_with_dataset(config, workdir: str, output):
  """The checkpoint found first (cheap), then the built dataset and that `output(step)` can be
  written, then the weights."""
  checkpoint = model_lib.find_checkpoint(config, workdir)
  source = BuiltTracklets(config_lib.data_dir(config, workdir), config.dataset.name)
  check_writable(output(checkpoint.step))
  return model_lib.restore(config, workdir, checkpoint=checkpoint), source


def run_eval(config, workdir: str) -> dict:
  """`eval` mode: restores `config.eval.step` (default the newest) and writes the report; with
  `config.eval.split_features` it scores saved features instead (`score_split_features`)."""
  if config.eval.split_features:
    return score_split_features(config, workdir)
  model, source = _restore_with_dataset(
    config, workdir, lambda step: os.path.join(workdir, "metrics.json")
  )
  results, _ = evaluate(model, config, source, workdir)
  return results


def run_extract(config, workdir: str) -> str:
  """`extract` mode: per-tracklet features, pids and cameras of the eval set to
  `<workdir>/features_step<N>.npz`; returns its path."""
  features_path = lambda step: os.path.join(workdir, f"features_step{step}.npz")
  model, source = _restore_with_dataset(config, workdir, features_path)
  features = features_lib.tracklet_features(model, source, config.data)
  path = features_path(model.step)
  if jax.process_index() == 0:
    arrays = {k: v for k, v in dataclasses.asdict(source.table).items() if v is not None}
    with atomic_write(path, "wb") as f:
      np.savez(f, features=features, **arrays)
    log.info("Wrote %s: features %s", path, features.shape)
  return path


def score_split_features(config, workdir: str) -> dict:
  """The mean over person splits (iLIDS-VID, PRID2011): `config.eval.split_features` lists, comma
  separated and in split order, the `.npz` files written by `extract` for the models trained
  with `dataset.split_index` = 0, 1, ...; each model is scored on its own split."""
  paths = [p.strip() for p in config.eval.split_features.split(",") if p.strip()]
  name = config_lib.protocol(config)
  if not datasets.protocol(name).person_splits:
    raise SplitFeaturesError(f"config.eval.split_features: protocol {name!r} has no person splits")
  for path in paths:
    if not os.path.isfile(path):
      raise MissingSplitFeatures(f"config.eval.split_features: no file {path}")
  features, table = [], None
  for path in paths:
    with np.load(path) as saved:
      features.append(saved["features"])
      if table is None:
        table = TrackletTable(**{k: saved[k] for k in saved.files if k != "features"})
      elif not np.array_equal(saved["pids"], table.pids):
        raise SplitFeaturesError(f"{path} holds another evaluation set than {paths[0]}")
  results = _score(config, name, features, table, range(len(paths)))
  log.info("%s over %d splits: %s", name, len(paths), format_metrics(results))
  write_report(workdir, results)
  return results
