"""The training state: model and optimiser, replicated over the mesh, from the initial weights or
from the checkpoint a resumed run continues.

`start` makes the state a training run begins with, and the `TrainSetup` it is used under (the
graph, the mesh, the input normalisation its weights expect), fixed before anything is compiled
against it. The batch is sharded over the one-axis `data` mesh of every device of every process
and the parameters are replicated (`reid_jax.sharding`), so XLA inserts the cross-device
reductions (BatchNorm statistics and triplet mining see the whole global batch). Inference never
comes here: it restores the model part of a checkpoint alone (`reid_jax.inference.model`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
from flax import nnx

from data_prep.errors import UserError
from reid_jax import config as config_lib
from reid_jax import optim, sharding
from reid_jax.checkpoints import CheckpointMismatch, CheckpointReader, MissingCheckpoint
from reid_jax.data import normalize_clips
from reid_jax.models import create_model, load_kinetics_i3d, load_torchvision_resnet50

log = logging.getLogger("reid_jax")


class MissingInitWeights(UserError, FileNotFoundError):
  """A `config.init` file or folder that is not there; the message says where the paper's are."""


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a training run's compiled functions are built against."""

  mesh: jax.sharding.Mesh
  graphdef: Any  # of (model, optimizer)
  normalization: str  # the input statistics the weights expect (data/normalize.py)
  num_classes: int
  steps_per_epoch: int

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  @property
  def batch_sharding(self):
    return sharding.batch_sharded(self.mesh)


def _new_model(config, num_classes: int):
  return create_model(
    config.model.name,
    num_classes=num_classes,
    rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
    **config_lib.model_overrides(config),
  )


def _with_optimizer(model, config, steps_per_epoch: int):
  return model, nnx.Optimizer(
    model, optim.make_optimizer(config.optim, steps_per_epoch), wrt=nnx.Param
  )


def abstract_state(config, *, num_classes: int, steps_per_epoch: int, mesh):
  """`(graphdef, state)` with `jax.ShapeDtypeStruct` leaves carrying the replicated sharding:
  nothing is allocated and no weights are loaded (restore targets, ahead-of-time compiles)."""
  graphdef, shapes = nnx.split(
    nnx.eval_shape(
      lambda: _with_optimizer(_new_model(config, num_classes), config, steps_per_epoch)
    )
  )
  return graphdef, sharding.abstract_like(shapes, sharding.replicated(mesh))


def build_state(
  config, *, num_classes: int, steps_per_epoch: int, mesh, init_weights: bool = True
) -> tuple[TrainSetup, Any]:
  """`(setup, state)`: model and optimiser from `config.init` (`init_weights`) or from random
  weights, replicated over `mesh`."""
  # One compiled program draws every initial weight (eager initialisers compile an op per
  # distinct shape), with the original threefry: JAX's default, partitionable one (for random
  # numbers sharded under jit) compiles 4-5x slower on CPUs, and these weights are drawn whole
  # and then replicated: the demo's state is made in 6 s instead of 10 (bench/init_state.py).
  with jax.threefry_partitionable(False):
    model = nnx.jit(lambda: _new_model(config, num_classes))()
  normalization = load_initial_weights(model, config) if init_weights else "imagenet"
  graphdef, state = nnx.split(
    nnx.jit(lambda model: _with_optimizer(model, config, steps_per_epoch))(model)
  )
  setup = TrainSetup(mesh, graphdef, normalization, num_classes, steps_per_epoch)
  return setup, sharding.replicate(state, setup.replicated)


@dataclasses.dataclass(frozen=True)
class Start:
  """Where a training run starts: its setup, state and step, and the checkpoint steps found
  damaged on the way (to be saved anew)."""

  setup: TrainSetup
  state: Any
  step: int
  damaged_steps: tuple[int, ...] = ()


def start(config, checkpoint_dir: str, *, num_classes: int, steps_per_epoch: int, mesh) -> Start:
  """The state of the newest intact checkpoint in `checkpoint_dir` (a resumed run, with the
  normalisation it trained with), else the initial weights of `config.init`."""
  with CheckpointReader(checkpoint_dir) as reader:
    if not reader.steps():
      setup, state = build_state(
        config, num_classes=num_classes, steps_per_epoch=steps_per_epoch, mesh=mesh
      )
      log.info("Input normalisation: %s (follows the initial weights)", setup.normalization)
      return Start(setup, state, 0)
    step = reader.resolve()
    meta = reader.meta(step)
    config_lib.check_same_network(config, meta["config"], f"the checkpoint in {checkpoint_dir}")
    graphdef, target = abstract_state(
      config, num_classes=num_classes, steps_per_epoch=steps_per_epoch, mesh=mesh
    )
    state = reader.restore(step, target=target, model_name=config.model.name)
    damaged = tuple(reader.damaged_steps)
  setup = TrainSetup(mesh, graphdef, meta["normalization"], num_classes, steps_per_epoch)
  log.info("Resumed from %s at step %d", checkpoint_dir, int(meta["step"]))
  return Start(setup, state, int(meta["step"]), damaged)


def check_init_files(config) -> None:
  """A missing weights file fails in a second, before the dataset is prepared."""
  for field in config_lib.INIT_SOURCES:
    path = config.init[field]
    if path and not os.path.exists(path):
      raise MissingInitWeights(
        f"config.init.{field}: {path} does not exist{config_lib.INIT_DOWNLOADS.get(field, '')}"
      )


def load_initial_weights(model, config) -> str:
  """Loads `config.init` (at most one source) into `model` and returns the input normalisation
  those weights were trained with; a model trained from scratch uses ImageNet's, like every 2D
  initialisation."""
  from reid_jax.models import kinetics_weights, torchvision_weights

  init = config.init
  if init.kinetics_i3d:
    load_kinetics_i3d(model, init.kinetics_i3d)
    return kinetics_weights.NORMALIZATION
  if init.checkpoint:
    with CheckpointReader(init.checkpoint) as reader:
      try:
        step = reader.resolve()
      except MissingCheckpoint:
        raise MissingInitWeights(
          f"config.init.checkpoint: no checkpoint in {init.checkpoint}"
        ) from None
      meta = reader.meta(step)
      # A fine-tuned re-id model may change its last stride; the rest is the network the weights
      # were trained in.
      config_lib.check_same_network(
        config, meta["config"], f"the checkpoint in {init.checkpoint}", may_differ=("last_stride",)
      )
      _copy_weights(model, reader, step)
    return meta["normalization"]
  if init.torchvision_resnet50:
    load_torchvision_resnet50(model, init.torchvision_resnet50, temporal_init=init.temporal_init)
  return torchvision_weights.NORMALIZATION


def _nested(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def copy_checkpoint_weights(
  model, directory: str, *, step: int | None = None, skip: tuple[str, ...] = ("head", "classifier")
) -> list[str]:
  """Copies the weights and BatchNorm statistics of checkpoint `step` (default the newest intact
  one) in `directory` into `model` (in place), all but the variables under the path `skip`: by
  default the identity classifier, whose size is the source dataset's number of identities. The
  bottleneck (the head's fc and BatchNorm) computes the retrieval feature and is copied. Only
  those variables are read: the checkpoint's optimiser state, step and RNG are not. Every
  variable is checked before any is written. Returns the paths copied.

  Raises:
    MissingCheckpoint: no checkpoint in `directory`.
    CheckpointMismatch: not a model of this trainer, or a variable of `model` is missing from
      it or has another shape (the message names it).
  """
  with CheckpointReader(directory) as reader:
    return _copy_weights(model, reader, reader.resolve(step), skip)


def _copy_weights(model, reader: CheckpointReader, step: int, skip=("head", "classifier")):
  """`copy_checkpoint_weights` from the open `reader`'s `step`, already resolved (checked)."""
  saved = reader.saved_shapes(step)
  if not any(key.startswith("0/") for key in saved):
    raise CheckpointMismatch(
      f"{reader.directory}/{step} holds no model state ('0'): not written by this trainer"
    )
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  variables, target = {}, {}
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    key = "/".join(str(p) for p in path)
    if tuple(str(p) for p in path[: len(skip)]) == tuple(skip):
      continue
    shape = saved.get(f"0/{key}/value")
    if shape is None:
      raise CheckpointMismatch(
        f"{reader.directory}/{step}: no variable {key!r} in the checkpoint; is it of another "
        "architecture?"
      )
    if tuple(shape) != tuple(variable.shape):
      raise CheckpointMismatch(
        f"{reader.directory}/{step}: {key!r} has shape {tuple(shape)}, the model expects "
        f"{tuple(variable.shape)}"
      )
    variables[key] = variable
    target[f"{key}/value"] = jax.ShapeDtypeStruct(variable.shape, variable.dtype, sharding=local)
  restored = reader.restore_part(step, "0", target=_nested(target), exact=False)
  for key, variable in variables.items():
    value = restored
    for part in f"{key}/value".split("/"):
      value = value[part]
    variable.set_value(value)
  log.info("Initial weights: %d variables of %s/%d", len(variables), reader.directory, step)
  return list(variables)


def bind(graphdef, normalization: str, state, clips):
  """`(model, optimizer, inputs)`: the model of `state` in training mode and the uint8 clips
  `[b, T, H, W, 3]` normalised as its weights expect. For the jitted train step."""
  model, optimizer = nnx.merge(graphdef, state)
  model.train()
  return model, optimizer, normalize_clips(clips, normalization)


def model_part(setup: TrainSetup, state):
  """`(graphdef, state)` of the model alone within a (model, optimizer) state: what an
  `InferenceModel` of the live weights holds (no copy)."""
  model, _ = nnx.merge(setup.graphdef, state)
  return nnx.split(model)
