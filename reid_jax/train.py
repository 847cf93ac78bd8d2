"""Training: `train_and_evaluate(config, workdir)`, top to bottom in banner sections, and the
`train` mode (`run`).

The same code runs on one CPU, one accelerator or many hosts (see `reid_jax.sharding` for the
mesh, `reid_jax.state` for the sharded state). Evaluation is `reid_jax.evaluation.runner`'s, on
an `InferenceModel` of the live weights; the dataset is made in `reid_jax.data.prepare`.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_prep.errors import UserError
from reid_jax import config as config_lib
from reid_jax import data as data_lib
from reid_jax import losses, sharding
from reid_jax import state as state_lib
from reid_jax.checkpoints import CheckpointWriter, latest_meta
from reid_jax.data.prepare import prepare_dataset
from reid_jax.data.tracklets import BuiltTracklets
from reid_jax.evaluation import runner
from reid_jax.evaluation.protocols import REPORTED_METRICS
from reid_jax.inference.model import InferenceModel
from reid_jax.models import num_params
from reid_jax.schedule import LearningRateSchedule

# The exit status of `python -m reid_jax.main` when a SIGTERM (preemption) stopped training after
# a checkpoint: EX_TEMPFAIL of sysexits.h, "try again", so a scheduler can tell it from 0 (done).
PREEMPTED_EXIT_STATUS = 75

# The run's own log; Orbax and TensorFlow log through absl, which `main` keeps to warnings.
log = logging.getLogger("reid_jax")


class NonFiniteTraining(UserError, FloatingPointError):
  """The loss or the gradient norm of a step is not finite; the message names the step."""


def run(config, workdir: str) -> dict:
  """`train` mode: `train_and_evaluate`; a preempted run exits with PREEMPTED_EXIT_STATUS."""
  result = train_and_evaluate(config, workdir)
  if "preempted_at_step" in result:
    log.warning(
      "Preempted: exiting with status %d; the same command resumes from step %d.",
      PREEMPTED_EXIT_STATUS,
      result["preempted_at_step"],
    )
    raise SystemExit(PREEMPTED_EXIT_STATUS)
  return result


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config.model` on `config.dataset`, resuming from `workdir` if it holds checkpoints;
  evaluates every `config.train.eval_every_epochs` and at the end. Returns the final metrics."""
  # ---------------------------------------------------------------------------------------------
  # Checks first: a missing weights file fails before any data is prepared.
  # ---------------------------------------------------------------------------------------------
  os.makedirs(workdir, exist_ok=True)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  if latest_meta(checkpoint_dir) is None:
    state_lib.check_init_files(config)

  # ---------------------------------------------------------------------------------------------
  # Data, mesh, model and optimiser: from the newest intact checkpoint (with the normalisation
  # it trained with), else from the initial weights. Fixed before anything is compiled.
  # ---------------------------------------------------------------------------------------------
  data_dir = prepare_dataset(config, workdir)
  info = data_lib.train_info(data_dir, config.dataset.name, split_index=config.dataset.split_index)
  begin = state_lib.start(
    config,
    checkpoint_dir,
    num_classes=info["num_classes"],
    steps_per_epoch=data_lib.steps_per_epoch(info["num_identities"], config.data.P),
    mesh=sharding.make_mesh(),
  )
  setup, state, start_step = begin.setup, begin.state, begin.step
  total_steps = setup.steps_per_epoch * config.optim.total_epochs
  log.info(
    "Model %s: %s parameters, %d classes; %d devices over %d processes; %d steps (%d epochs x %d)",
    config.model.name,
    f"{num_params(nnx.merge(setup.graphdef, state)[0]):,}",
    setup.num_classes,
    jax.device_count(),
    jax.process_count(),
    total_steps,
    config.optim.total_epochs,
    setup.steps_per_epoch,
  )

  # ---------------------------------------------------------------------------------------------
  # The update step, the checkpoints, the schedule (for the log), the writer and the input:
  # batch s is a pure function of (seed, s), so a resumed run sees the same batches.
  # ---------------------------------------------------------------------------------------------
  train_step = make_train_step(setup, config)
  ckpt = CheckpointWriter(
    checkpoint_dir,
    save_every_steps=config.train.checkpoint_every_steps,
    keep_last=config.train.keep_checkpoints,
    damaged_steps=begin.damaged_steps,
  )
  schedule = LearningRateSchedule.from_config(config.optim, setup.steps_per_epoch)
  # Deferred: clu imports TensorFlow, which must not load before a test or tool has imported
  # torchvision (in this order its Triton import crashes the process).
  from reid_jax import metric_writer

  writer = metric_writer.create_writer(workdir, start_step)
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
  eval_source = BuiltTracklets(data_dir, config.dataset.name)

  def evaluate(step: int) -> dict:
    graphdef, weights = state_lib.model_part(setup, state)
    meta = _meta(setup, config, step, step // setup.steps_per_epoch)
    model = InferenceModel(graphdef, weights, setup.normalization, step, meta, setup.mesh)
    results, _ = runner.evaluate(model, config, eval_source, workdir)
    writer.write_scalars(step, {f"eval/{k}": results[k] for k in REPORTED_METRICS})
    return results

  # ---------------------------------------------------------------------------------------------
  # The loop. Metrics stay on device until a log step, so dispatch runs ahead of compute.
  # ---------------------------------------------------------------------------------------------
  pending: list[tuple[int, dict]] = []
  window_start, window_steps = time.time(), 0
  first_step_done = None
  step = start_step
  try:
    while step < total_steps:
      batch = sharding.global_batch(next(train_iter), setup.batch_sharding)
      # Everything the step reads is on the devices already: an implicit host <-> device copy
      # (a numpy array or Python scalar slipped into the step) is an error, not a slowdown.
      with jax.transfer_guard("disallow"):
        state, metrics = train_step(state, batch)
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
            step,
            total_steps,
            setup.steps_per_epoch,
            logged,
            rate,
            config_lib.train_batch_size(config),
            writer,
          )
          window_start, window_steps = now, 0
      ckpt.maybe_save(
        step, state=state, meta=_meta(setup, config, step, step // setup.steps_per_epoch)
      )
      if ckpt.preemption_requested():
        _flush_metrics(pending, writer, schedule)
        log.warning("Stopping at step %d after a preemption checkpoint.", step)
        return {"preempted_at_step": step}
      if due_eval:
        evaluate(step)
    _flush_metrics(pending, writer, schedule)
    ckpt.maybe_save(
      step,
      state=state,
      meta=_meta(setup, config, step, step // setup.steps_per_epoch),
      force=True,
    )
    return evaluate(step)
  finally:
    ckpt.close()
    writer.close()
    train_iter.close()


# -----------------------------------------------------------------------------------------------
# The update step: losses, gradients and Adam, sharded over the batch.
# -----------------------------------------------------------------------------------------------


def make_train_step(setup: state_lib.TrainSetup, config):
  graphdef, normalization = setup.graphdef, setup.normalization
  loss_cfg = config.loss

  def train_step(state, batch):
    model, optimizer, clips = state_lib.bind(graphdef, normalization, state, batch["clips"])
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


# -----------------------------------------------------------------------------------------------
# Checkpoint metadata and the log: a line a person can follow, scalars for TensorBoard and JSON.
# -----------------------------------------------------------------------------------------------


def _meta(setup: state_lib.TrainSetup, config, step: int, epoch: int) -> dict:
  return {
    "model": config.model.name,
    "step": step,
    "epoch": epoch,
    "normalization": setup.normalization,
    "dataset": config.dataset.name,
    "num_classes": setup.num_classes,  # the head's size: restoring needs no dataset
    "seed": config.seed,
    # The input pipeline is a pure function of (seed, step): the step is its position.
    "input_position": step,
    "config": config.to_json(),
  }


def _flush_metrics(pending, writer, schedule) -> dict:
  """Fetches and writes the metrics of the pending steps; stops the run at the first step
  whose loss or gradient norm is not finite (a non-finite gradient has already reached the
  parameters, though the loss of its step was finite)."""
  if not pending:
    return {}
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
      raise NonFiniteTraining(
        f"Non-finite loss {float(metrics['loss'])} or gradient norm "
        f"{float(metrics['grad_norm'])} at step {step} (softmax "
        f"{float(metrics['softmax_loss'])}, triplet {float(metrics['triplet_loss'])}): "
        f"lower config.optim.base_lr or enable config.optim.grad_clip_norm"
      )
  last_step, last = pending[-1][0], fetched[-1]
  mean = {k: float(np.mean([m[k] for m in fetched])) for k in last}
  mean["lr"] = float(schedule(last_step - 1))
  writer.write_scalars(last_step, {f"train/{k}": v for k, v in mean.items()})
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
  writer.write_scalars(step, {"train/clips_per_second": clips_per_second})


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
