"""Evaluation of a model state: features of every evaluation tracklet, the configured protocol's
numbers, the report; and the `eval` and `extract` modes, which restore a checkpoint first."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import numpy as np
from flax import nnx

from data_prep import built, datasets
from reid_jax import config as config_lib
from reid_jax import data as data_lib
from reid_jax import state as state_lib
from reid_jax.evaluation.extraction import extract_features
from reid_jax.evaluation.protocols import format_metrics, run_protocol
from reid_jax.evaluation.report import write_report

log = logging.getLogger("reid_jax")


def extract_eval_features(setup: state_lib.Setup, config, data_dir: str, feature_fn=None):
  """Per-tracklet features `[N, D]` of the evaluation set (the same on every process), and its
  TrackletTable."""
  feature_fn = feature_fn or state_lib.make_feature_fn(setup)
  eval_iter, table = data_lib.make_eval_iterator(
    data_dir,
    config.dataset.name,
    batch_size=config.data.eval_batch_size,
    num_frames=config.data.num_frames,
    height=config.data.height,
    width=config.data.width,
    split_index=config.dataset.split_index,
  )
  state = setup.state
  features = extract_features(
    lambda clips: feature_fn(
      state, jax.make_array_from_process_local_data(setup.batch_sharding, clips)
    ),
    eval_iter,
    len(table.pids),
  )
  return features, table


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


def evaluate_state(
  setup: state_lib.Setup, config, data_dir: str, workdir: str | None, *, step: int, feature_fn=None
) -> tuple[dict, np.ndarray, data_lib.TrackletTable]:
  """Extracts features, scores the configured protocol and (with `workdir`) writes the report.
  Returns the results, the per-tracklet features and their table."""
  start = time.time()
  features, table = extract_eval_features(setup, config, data_dir, feature_fn)
  extract_seconds = time.time() - start
  name = config_lib.protocol(config)
  # A model trained on one person split is scored on that split only: the test people of the
  # other splits were its training people. `score_split_features` averages 10 models' splits.
  splits = [config.dataset.split_index] if datasets.protocol(name).person_splits else None
  results = _score(config, name, features, table, splits)
  results["step"] = step
  log.info(
    "Step %d, protocol %s: %s  (features in %.1fs)",
    step,
    results["protocol"],
    format_metrics(results),
    extract_seconds,
  )
  if workdir is not None and jax.process_index() == 0:
    frames_fn = report_frames_fn(data_dir, config)
    write_report(
      workdir,
      results,
      features=features,
      table=table,
      config=config,
      frames_fn=frames_fn,
      attention_fn=report_attention_fn(setup, config, frames_fn),
      num_queries=config.eval.num_ranked_queries,
      top_k=config.eval.top_k,
    )
  return results, features, table


def report_frames_fn(data_dir: str, config, max_frames: int = 32):
  """`tracklet row -> uint8 [n, H, W, 3]`: its first `max_frames` frames, decoded and resized
  by the evaluation pipeline's own function, for the ranked-results sheets and the attention
  picture (which thus runs the model on the pixels evaluation gives it)."""
  from reid_jax.data import pipeline, tracklets

  index = built.load_index(data_dir, config.dataset.name, "eval")
  reader = tracklets.FrameReader(data_dir, config.dataset.name, index)

  def frames(row: int) -> np.ndarray:
    start, end = index["frame_start"][row], index["frame_start"][row + 1]
    jpegs = reader(np.arange(start, min(end, start + max_frames)))
    return np.stack(
      [
        pipeline.decode_eval_frame(bytes(j), config.data.height, config.data.width).numpy()
        for j in jpegs
      ]
    )

  return frames


def report_attention_fn(setup: state_lib.Setup, config, frames_fn):
  """For non-local models: `tracklet -> (frames, attention dicts)` of its first chunk, whose
  frames come from `frames_fn` (the one the ranked sheets use)."""
  arch = nnx.merge(setup.graphdef, setup.state)[0].arch
  if not arch.nonlocal_stages or not arch.inflate:
    return None
  t = config.data.num_frames
  graphdef, normalization = setup.graphdef, setup.normalization

  @jax.jit
  def forward(state, clip):
    model, _, inputs = state_lib.bind(graphdef, normalization, state, clip, train=False)
    return model(inputs, return_attention=True)["attention"]

  def attention(tracklet: int):
    frames = frames_fn(tracklet)
    clip = np.resize(frames, (t,) + frames.shape[1:]) if len(frames) < t else frames[:t]
    # Only process 0 draws: run on its own copy of the replicated weights, so the other
    # processes need not take part in this computation.
    local_state = jax.tree.map(lambda x: x.addressable_data(0), setup.state)
    attentions = forward(local_state, clip[None])
    # Under jit the grids came back as arrays; the picture wants them as Python ints.
    return clip, [
      {
        "weights": np.asarray(a["weights"]),
        "query_grid": tuple(int(v) for v in a["query_grid"]),
        "key_grid": tuple(int(v) for v in a["key_grid"]),
      }
      for a in attentions
    ]

  return attention


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`eval` mode: restores `config.eval.step` (default the latest) and writes the report; with
  `config.eval.split_features` it scores saved features instead (see `score_split_features`)."""
  config_lib.validate(config, num_devices=jax.device_count())
  if config.eval.split_features:
    return score_split_features(config, workdir)
  data_dir, setup, step = state_lib.restore_for_eval(config, workdir)
  results, _, _ = evaluate_state(setup, config, data_dir, workdir, step=step)
  return results


def extract(config, workdir: str) -> str:
  """`extract` mode: per-tracklet features, pids and cameras of the eval set to a `.npz`."""
  config_lib.validate(config, num_devices=jax.device_count())
  data_dir, setup, step = state_lib.restore_for_eval(config, workdir)
  features, table = extract_eval_features(setup, config, data_dir)
  path = os.path.join(workdir, f"features_step{step}.npz")
  if jax.process_index() == 0:
    arrays = {k: v for k, v in dataclasses.asdict(table).items() if v is not None}
    tmp = path + ".tmp.npz"
    np.savez(tmp, features=features, **arrays)
    os.replace(tmp, path)
    log.info("Wrote %s: features %s", path, features.shape)
  return path


def score_split_features(config, workdir: str) -> dict:
  """The mean over person splits (iLIDS-VID, PRID2011): `config.eval.split_features` lists, comma
  separated and in split order, the `.npz` files written by `extract` for the models trained
  with `dataset.split_index` = 0, 1, ...; each model is scored on its own split."""
  paths = [p.strip() for p in config.eval.split_features.split(",") if p.strip()]
  name = config_lib.protocol(config)
  if not datasets.protocol(name).person_splits:
    raise ValueError(f"config.eval.split_features: protocol {name!r} has no person splits")
  features, table = [], None
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config.eval.split_features: no file {path}")
    with np.load(path) as saved:
      features.append(saved["features"])
      if table is None:
        table = data_lib.TrackletTable(**{k: saved[k] for k in saved.files if k != "features"})
      elif not np.array_equal(saved["pids"], table.pids):
        raise ValueError(f"{path} holds another evaluation set than {paths[0]}")
  results = _score(config, name, features, table, range(len(paths)))
  log.info("%s over %d splits: %s", name, len(paths), format_metrics(results))
  if jax.process_index() == 0:
    write_report(workdir, results)
  return results
