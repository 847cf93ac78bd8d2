"""Training, evaluation and feature extraction, top to bottom in one function per mode.

`train_and_evaluate(config, workdir)` reads in sections: logging, mesh, data, model and
optimiser, sharding, the update step, checkpoints, evaluation, the loop. The same code runs on
one CPU, one accelerator or many hosts: the batch is sharded over a one-axis `data` mesh of every
device of every process, parameters are replicated, and XLA inserts the cross-device reductions
(so BatchNorm statistics and the triplet mining see the whole global batch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reid_jax import checkpoint as checkpoint_lib
from reid_jax import config as config_lib
from reid_jax import data as data_lib
from reid_jax import evaluation, losses, optim
from reid_jax.models import (
  create_model,
  kinetics_weights,
  load_kinetics_i3d,
  load_torchvision_resnet50,
  num_params,
  torchvision_weights,
)

# The run's own log; Orbax and TensorFlow log through absl, which `main` keeps to warnings.
log = logging.getLogger("reid_jax")


# ---------------------------------------------------------------------------------------------
# Data: make the dataset if it is missing (synthetic generation and the real converter).
# ---------------------------------------------------------------------------------------------


def prepare_dataset(config, workdir: str) -> str:
  """Returns the data_dir holding the built dataset, building it first if needed.

  Only process 0 generates and converts; the others wait at a barrier, then read the result.
  """
  name = config.dataset.name
  data_dir = config.dataset.data_dir or os.path.join(workdir, "data")
  stats = os.path.join(data_dir, name, "stats.json")
  if jax.process_index() == 0 and not os.path.exists(stats):
    manual_dir = config.dataset.manual_dir
    synthetic = config.dataset.synthetic.to_dict()
    if synthetic.get("identities", 0):
      manual_dir = manual_dir or os.path.join(workdir, "data", "synthetic_download")
      if not os.path.exists(manual_dir):
        _generate_synthetic(manual_dir, synthetic)
    if not manual_dir:
      raise FileNotFoundError(
        f"No built dataset at {os.path.dirname(stats)} and config.dataset.manual_dir is not "
        f"set: build it with `python -m data_prep.build --dataset={name} "
        f"--manual_dir=<download> --data_dir={data_dir}` or set --config.dataset.manual_dir"
      )
    import tensorflow_datasets as tfds

    from data_prep import build  # deferred: only the building process needs the converters

    tfds.disable_progress_bar()
    build.build(name, manual_dir, data_dir)
  _barrier("dataset")
  return data_dir


def _generate_synthetic(manual_dir: str, settings: dict) -> None:
  from data_prep import synthetic

  partial = manual_dir.rstrip("/") + ".partial"
  if os.path.exists(partial):
    import shutil

    shutil.rmtree(partial)  # an interrupted earlier generation
  log.info("Generating the synthetic MARS-layout dataset in %s", manual_dir)
  synthetic.generate(partial, **settings)
  os.replace(partial, manual_dir)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


# ---------------------------------------------------------------------------------------------
# Model, optimiser and their sharded state.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  """What every mode needs: the mesh, the model graph and its sharded state."""

  mesh: jax.sharding.Mesh
  graphdef: Any
  state: Any  # nnx.State of (model, optimizer)
  normalization: str  # the input statistics the weights expect (data/normalize.py)
  replicated: NamedSharding
  batch_sharding: NamedSharding
  num_classes: int
  steps_per_epoch: int


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A one-axis `data` mesh of `devices` (default: every device of every process)."""
  count = len(devices) if devices is not None else jax.device_count()
  return jax.make_mesh(
    (count,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def build_state(
  config,
  *,
  num_classes: int,
  steps_per_epoch: int,
  mesh,
  abstract: bool = False,
  init_weights: bool = True,
) -> Setup:
  """Creates model and optimiser and replicates them over the mesh.

  With `init_weights` the model starts from `config.init` (Kinetics I3D, a 2D ResNet-50 or a
  checkpoint to fine-tune); without, from random weights that a restore will replace, so the
  init file need not exist any more. `abstract=True` gives the state's shapes, dtypes and
  shardings only: nothing is allocated and no weights are loaded, for compiling ahead of time
  (bench/memory.py).
  """

  def new_model_and_optimizer(load_weights: bool):
    model = create_model(
      config.model.name,
      num_classes=num_classes,
      rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
      **config_lib.model_overrides(config),
    )
    if load_weights:
      init = config.init
      if init.kinetics_i3d:
        load_kinetics_i3d(model, init.kinetics_i3d)
      elif init.torchvision_resnet50:
        load_torchvision_resnet50(
          model, init.torchvision_resnet50, temporal_init=init.temporal_init
        )
      elif init.checkpoint:
        meta = checkpoint_lib.latest_meta(init.checkpoint)
        if meta is not None:
          # A fine-tuned re-id model may change its last stride; the rest is the network the
          # weights were trained in.
          config_lib.check_same_network(
            config,
            meta["config"],
            f"the checkpoint in {init.checkpoint}",
            may_differ=("last_stride",),
          )
        checkpoint_lib.load_params_for_finetuning(
          model, init.checkpoint, skip=("head", "classifier")
        )
    return model, nnx.Optimizer(
      model, optim.make_optimizer(config.optim, steps_per_epoch), wrt=nnx.Param
    )

  replicated = NamedSharding(mesh, P())
  if abstract:
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: new_model_and_optimizer(False)))
    state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes
    )
  else:
    graphdef, state = nnx.split(new_model_and_optimizer(init_weights))
    state = replicate(state, replicated)
  return Setup(
    mesh=mesh,
    graphdef=graphdef,
    state=state,
    normalization=init_normalization(config) if init_weights and not abstract else "",
    replicated=replicated,
    batch_sharding=NamedSharding(mesh, P("data")),
    num_classes=num_classes,
    steps_per_epoch=steps_per_epoch,
  )


def init_normalization(config) -> str:
  """The input statistics `config.init`'s weights were trained with; a model trained from
  scratch uses ImageNet's, like every 2D initialisation."""
  if config.init.kinetics_i3d:
    return kinetics_weights.NORMALIZATION
  if config.init.checkpoint:
    meta = checkpoint_lib.latest_meta(config.init.checkpoint)
    if meta is None:
      raise FileNotFoundError(f"config.init.checkpoint: no checkpoint in {config.init.checkpoint}")
    return meta["normalization"]
  return torchvision_weights.NORMALIZATION


def replicate(tree, sharding: NamedSharding):
  """Host values, identical on every process, -> global arrays replicated over the mesh.

  (`jax.device_put` only reaches this process's devices when there are several processes.)
  """

  def put(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(put, tree)


def abstract_like(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  """Each process's rows -> one global array per key, sharded over `data`."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


# ---------------------------------------------------------------------------------------------
# The update step and the feature function.
# ---------------------------------------------------------------------------------------------


def make_train_step(setup: Setup, config):
  graphdef, normalization = setup.graphdef, setup.normalization
  loss_cfg = config.loss

  def train_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    model.train()
    clips = data_lib.normalize_clips(batch["clips"], normalization)
    labels = batch["labels"]

    def loss_fn(model):
      out = model(clips)
      ce = losses.cross_entropy_label_smoothing(out["logits"], labels, loss_cfg.label_smoothing)
      triplet, aux = losses.batch_hard_triplet_loss(
        out["features"], labels, loss_cfg.triplet_margin, metric=loss_cfg.triplet_metric
      )
      accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == labels)
      return ce + loss_cfg.triplet_weight * triplet, dict(
        softmax_loss=ce, triplet_loss=triplet, accuracy=accuracy, **aux
      )

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return nnx.state((model, optimizer)), metrics

  return jax.jit(
    train_step,
    in_shardings=(setup.replicated, setup.batch_sharding),
    out_shardings=(setup.replicated, setup.replicated),
    donate_argnums=(0,),
  )


def make_feature_fn(setup: Setup):
  """`(state, clips uint8 [b, T, H, W, 3] global) -> features [b, D]` in evaluation mode."""
  graphdef, normalization = setup.graphdef, setup.normalization

  def features(state, clips):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return model(data_lib.normalize_clips(clips, normalization))["features"]

  return jax.jit(
    features,
    in_shardings=(setup.replicated, setup.batch_sharding),
    out_shardings=setup.batch_sharding,
  )


# ---------------------------------------------------------------------------------------------
# Logging: a line a person can follow, TensorBoard scalars and JSON lines (process 0 only).
# ---------------------------------------------------------------------------------------------


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard, on process 0."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    import tensorflow as tf  # already loaded by the input pipeline

    self._tf = tf
    self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    with self._summary.as_default(step=step):
      for k, v in scalars.items():
        self._tf.summary.scalar(k, v)
    self._summary.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._summary.close()


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Evaluation: features of every eval tracklet, the protocol's numbers, the pictures.
# ---------------------------------------------------------------------------------------------


def extract_eval_features(setup: Setup, config, data_dir: str, feature_fn=None):
  """Per-tracklet features `[N, D]` of the evaluation set (the same on every process), and its
  TrackletTable."""
  feature_fn = feature_fn or make_feature_fn(setup)
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
  features = evaluation.extract_features(
    lambda clips: feature_fn(
      state, jax.make_array_from_process_local_data(setup.batch_sharding, clips)
    ),
    eval_iter,
    len(table.pids),
  )
  return features, table


def evaluate_state(
  setup: Setup, config, data_dir: str, workdir: str | None, *, step: int, feature_fn=None
) -> tuple[dict, np.ndarray, data_lib.TrackletTable]:
  """Extracts features, scores the configured protocol and (with `workdir`) writes the report.
  Returns the results, the per-tracklet features and their table."""
  start = time.time()
  features, table = extract_eval_features(setup, config, data_dir, feature_fn)
  extract_seconds = time.time() - start
  name = config_lib.protocol(config)
  # A model trained on one person split is scored on that split only: the test people of the
  # other splits were its training people. `score_split_features` averages 10 models' splits.
  splits = [config.dataset.split_index] if name in evaluation.protocols.SPLIT_PROTOCOLS else None
  results = evaluation.run_protocol(
    name,
    features,
    table,
    metric=config.eval.metric,
    rerank=config.eval.rerank,
    max_rank=config.eval.max_rank,
    splits=splits,
  )
  results["step"] = step
  log.info(
    "Step %d, protocol %s: rank-1 %.2f%%  rank-5 %.2f%%  rank-10 %.2f%%  "
    "rank-20 %.2f%%  mAP %.2f%%  mINP %.2f%%  (features in %.1fs)",
    step,
    results["protocol"],
    *(100 * results[k] for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")),
    extract_seconds,
  )
  if workdir is not None and jax.process_index() == 0:
    frames_fn = _frames_fn(data_dir, config)
    evaluation.write_report(
      workdir,
      results,
      features=features,
      table=table,
      config=config,
      frames_fn=frames_fn,
      attention_fn=_attention_fn(setup, config, frames_fn),
      num_queries=config.eval.num_ranked_queries,
      top_k=config.eval.top_k,
    )
  return results, features, table


def _frames_fn(data_dir: str, config, max_frames: int = 32):
  """`tracklet row -> uint8 [n, H, W, 3]`: its first `max_frames` frames, decoded and resized
  by the evaluation pipeline's own function, for the ranked-results sheets and the attention
  picture (which thus runs the model on the pixels evaluation gives it)."""
  from reid_jax.data import pipeline, tracklets

  index = tracklets.load_index(data_dir, config.dataset.name, "eval")
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


def _attention_fn(setup: Setup, config, frames_fn):
  """For non-local models: `tracklet -> (frames, attention dicts)` of its first chunk, whose
  frames come from `frames_fn` (the one the ranked sheets use)."""
  arch = nnx.merge(setup.graphdef, setup.state)[0].arch
  if not arch.nonlocal_stages or not arch.inflate:
    return None
  t = config.data.num_frames
  graphdef, normalization = setup.graphdef, setup.normalization

  @jax.jit
  def forward(state, clip):
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return model(data_lib.normalize_clips(clip, normalization), return_attention=True)["attention"]

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


# ---------------------------------------------------------------------------------------------
# The modes.
# ---------------------------------------------------------------------------------------------


def _setup_for(config, workdir, *, init_weights: bool):
  data_dir = prepare_dataset(config, workdir)
  info = data_lib.train_info(data_dir, config.dataset.name, split_index=config.dataset.split_index)
  steps = data_lib.steps_per_epoch(info["num_identities"], config.data.P)
  mesh = make_mesh()
  setup = build_state(
    config,
    num_classes=info["num_classes"],
    steps_per_epoch=steps,
    mesh=mesh,
    init_weights=init_weights,
  )
  return data_dir, setup


def _check_init_files(config) -> None:
  """A missing weights file fails in a second, before the dataset is prepared."""
  for field in config_lib.INIT_SOURCES:
    path = config.init[field]
    if path and not os.path.exists(path):
      raise FileNotFoundError(
        f"config.init.{field}: {path} does not exist{config_lib.INIT_DOWNLOADS.get(field, '')}"
      )


def _meta(setup: Setup, config, step: int, epoch: int) -> dict:
  return {
    "model": config.model.name,
    "step": step,
    "epoch": epoch,
    "normalization": setup.normalization,
    "dataset": config.dataset.name,
    "seed": config.seed,
    # The input pipeline is a pure function of (seed, step): the step is its position.
    "input_position": step,
    "config": config.to_json(),
  }


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config.model` on `config.dataset`, resuming from `workdir` if it holds checkpoints;
  evaluates every `config.train.eval_every_epochs` and at the end. Returns the final metrics."""
  os.makedirs(workdir, exist_ok=True)
  config_lib.validate(config, num_devices=jax.device_count())
  resuming = checkpoint_lib.latest_meta(os.path.join(workdir, "checkpoints")) is not None
  if not resuming:
    _check_init_files(config)
  data_dir, setup = _setup_for(config, workdir, init_weights=not resuming)
  model_params = num_params(nnx.merge(setup.graphdef, setup.state)[0])
  total_steps = setup.steps_per_epoch * config.optim.total_epochs
  log.info(
    "Model %s: %s parameters, %d classes; %d devices over %d processes; %d steps (%d epochs x %d)",
    config.model.name,
    f"{model_params:,}",
    setup.num_classes,
    jax.device_count(),
    jax.process_count(),
    total_steps,
    config.optim.total_epochs,
    setup.steps_per_epoch,
  )

  # --- Checkpoints: resume where a killed run stopped. -----------------------------------------
  ckpt = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    save_every_steps=config.train.checkpoint_every_steps,
    keep_last=config.train.keep_checkpoints,
  )
  start_step = 0
  if resuming:
    setup.state, meta = ckpt.restore(
      abstract_state=abstract_like(setup.state), model_name=config.model.name
    )
    setup.normalization = _normalization_of(config, meta, ckpt.directory)
    start_step = int(meta["step"])
    log.info("Resumed from %s at step %d", ckpt.directory, start_step)
  else:
    log.info("Input normalisation: %s (follows the initial weights)", setup.normalization)

  train_step = make_train_step(setup, config)
  feature_fn = make_feature_fn(setup)
  schedule = optim.schedule_from_config(config.optim, setup.steps_per_epoch)
  writer = MetricWriter(workdir)
  train_iter = data_lib.make_train_iterator(
    data_dir,
    config.dataset.name,
    P=config.data.P,
    K=config.data.K,
    num_frames=config.data.num_frames,
    stride=config.data.stride,
    height=config.data.height,
    width=config.data.width,
    seed=config.seed,
    start_step=start_step,
    split_index=config.dataset.split_index,
  )

  # --- The loop. Metrics stay on device until a log step, so dispatch runs ahead of compute. -----
  pending: list[tuple[int, dict]] = []
  results = None
  window_start, window_steps = time.time(), 0
  first_step_done = None
  step = start_step
  try:
    while step < total_steps:
      batch = global_batch(next(train_iter), setup.batch_sharding)
      # Everything the step reads is on the devices already: an implicit host <-> device copy
      # (a numpy array or Python scalar slipped into the step) is an error, not a slowdown.
      with jax.transfer_guard("disallow"):
        setup.state, metrics = train_step(setup.state, batch)
      step += 1
      window_steps += 1
      pending.append((step, metrics))
      epoch_done = step % setup.steps_per_epoch == 0
      due_eval = (
        epoch_done
        and config.train.eval_every_epochs
        and (step // setup.steps_per_epoch) % config.train.eval_every_epochs == 0
        and step < total_steps
      )
      due_save = step % config.train.checkpoint_every_steps == 0
      if step % config.train.log_every_steps == 0 or step == total_steps or due_save or due_eval:
        logged = _flush_metrics(pending, writer, schedule)
        pending = []
        now = time.time()
        if first_step_done is None:
          log.info(
            "step %d/%d  loss %.4f  (compiling the step and the first %d steps: %.0fs)",
            step,
            total_steps,
            logged["loss"],
            window_steps,
            now - window_start,
          )
          first_step_done = now  # throughput from here on excludes compilation
          window_start, window_steps = now, 0
        elif window_steps:
          rate = window_steps / (now - window_start)
          _log_progress(
            step, total_steps, setup.steps_per_epoch, logged, rate, config.data.batch_size, writer
          )
          window_start, window_steps = now, 0
      ckpt.maybe_save(
        step, state=setup.state, meta=_meta(setup, config, step, step // setup.steps_per_epoch)
      )
      if ckpt.preemption_requested():
        _flush_metrics(pending, writer, schedule)
        log.warning("Stopping at step %d after a preemption checkpoint.", step)
        return {"preempted_at_step": step}
      if due_eval:
        results = _evaluate_and_log(setup, config, data_dir, workdir, step, feature_fn, writer)
    _flush_metrics(pending, writer, schedule)
    pending = []
    ckpt.maybe_save(
      step,
      state=setup.state,
      meta=_meta(setup, config, step, step // setup.steps_per_epoch),
      force=True,
    )
    results = _evaluate_and_log(setup, config, data_dir, workdir, step, feature_fn, writer)
    return results
  finally:
    ckpt.close()
    writer.close()


def _evaluate_and_log(setup, config, data_dir, workdir, step, feature_fn, writer) -> dict:
  results, _, _ = evaluate_state(setup, config, data_dir, workdir, step=step, feature_fn=feature_fn)
  writer.write(
    step, {f"eval/{k}": results[k] for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")}
  )
  return results


def _flush_metrics(pending, writer: MetricWriter, schedule) -> dict:
  """Fetches and writes the metrics of the pending steps; stops the run at the first step
  whose loss or gradient norm is not finite (a non-finite gradient has already reached the
  parameters, though the loss of its step was finite)."""
  if not pending:
    return {}
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
      raise FloatingPointError(
        f"Non-finite loss {float(metrics['loss'])} or gradient norm "
        f"{float(metrics['grad_norm'])} at step {step} (softmax "
        f"{float(metrics['softmax_loss'])}, triplet {float(metrics['triplet_loss'])}): "
        f"lower config.optim.base_lr or enable config.optim.grad_clip_norm"
      )
  last_step, last = pending[-1][0], fetched[-1]
  mean = {k: float(np.mean([m[k] for m in fetched])) for k in last}
  mean["lr"] = float(schedule(last_step - 1))
  writer.write(last_step, {f"train/{k}": v for k, v in mean.items()})
  return mean


def _log_progress(step, total, steps_per_epoch, m, steps_per_second, batch_size, writer):
  clips_per_second = steps_per_second * batch_size
  eta = (total - step) / steps_per_second
  log.info(
    "epoch %d  step %d/%d  loss %.4f (softmax %.4f, triplet %.4f)  acc %.3f  lr %.2e  "
    "%.1f clips/s  ETA %s",
    (step - 1) // steps_per_epoch + 1,
    step,
    total,
    m["loss"],
    m["softmax_loss"],
    m["triplet_loss"],
    m["accuracy"],
    m["lr"],
    clips_per_second,
    _format_eta(eta),
  )
  writer.write(step, {"train/clips_per_second": clips_per_second})


def _normalization_of(config, meta: dict, directory) -> str:
  """The restored run's input normalisation, after checking that `config` builds the network
  it trained (a shape-preserving difference, e.g. the stem pool's padding, would otherwise
  go unnoticed)."""
  config_lib.check_same_network(config, meta["config"], f"the checkpoint in {directory}")
  return meta["normalization"]


def _restore_for_eval(config, workdir):
  data_dir, setup = _setup_for(config, workdir, init_weights=False)
  ckpt = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), save_every_steps=1, handle_sigterm=False
  )
  try:
    step = None if config.eval.step < 0 else config.eval.step
    setup.state, meta = ckpt.restore(
      step, abstract_state=abstract_like(setup.state), model_name=config.model.name
    )
    setup.normalization = _normalization_of(config, meta, ckpt.directory)
  finally:
    ckpt.close()
  return data_dir, setup, int(meta["step"])


def evaluate_checkpoint(config, workdir: str) -> dict:
  """`eval` mode: restores `config.eval.step` (default the latest) and writes the report; with
  `config.eval.split_features` it scores saved features instead (see `score_split_features`)."""
  config_lib.validate(config, num_devices=jax.device_count())
  if config.eval.split_features:
    return score_split_features(config, workdir)
  data_dir, setup, step = _restore_for_eval(config, workdir)
  results, _, _ = evaluate_state(setup, config, data_dir, workdir, step=step)
  return results


def extract(config, workdir: str) -> str:
  """`extract` mode: per-tracklet features, pids and cameras of the eval set to a `.npz`."""
  config_lib.validate(config, num_devices=jax.device_count())
  data_dir, setup, step = _restore_for_eval(config, workdir)
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
  """The 10-split mean of iLIDS-VID / PRID2011: `config.eval.split_features` lists, comma
  separated and in split order, the `.npz` files written by `extract` for the models trained
  with `dataset.split_index` = 0, 1, ...; each model is scored on its own split."""
  paths = [p.strip() for p in config.eval.split_features.split(",") if p.strip()]
  name = config_lib.protocol(config)
  if name not in evaluation.protocols.SPLIT_PROTOCOLS:
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
  results = evaluation.run_protocol(
    name,
    features,
    table,
    metric=config.eval.metric,
    rerank=config.eval.rerank,
    max_rank=config.eval.max_rank,
    splits=range(len(paths)),
  )
  log.info(
    "%s over %d splits: rank-1 %.2f%% (std %.2f)  mAP %.2f%% (std %.2f)",
    name,
    len(paths),
    100 * results["rank1"],
    100 * results["rank1_std"],
    100 * results["mAP"],
    100 * results["mAP_std"],
  )
  if jax.process_index() == 0:
    evaluation.write_report(workdir, results)
  return results
