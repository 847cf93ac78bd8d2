"""The mesh, the model and optimiser state sharded over it, and the model applied to clips.

Every mode (train, eval, extract) starts here: `setup_for` prepares the dataset and builds a
`Setup` (mesh, model graph, replicated state, the input normalisation its weights expect);
`restore_for_eval` fills it from a checkpoint. The batch is sharded over a one-axis `data`
mesh of every device of every process and the parameters are replicated, so XLA inserts the
cross-device reductions (BatchNorm statistics and triplet mining see the whole global batch).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from reid_jax import checkpoint as checkpoint_lib
from reid_jax import config as config_lib
from reid_jax import data as data_lib
from reid_jax import optim
from reid_jax.data.prepare import prepare_dataset
from reid_jax.models import (
  create_model,
  kinetics_weights,
  load_kinetics_i3d,
  load_torchvision_resnet50,
  torchvision_weights,
)


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

  def new_model():
    return create_model(
      config.model.name,
      num_classes=num_classes,
      rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
      **config_lib.model_overrides(config),
    )

  def with_optimizer(model):
    return model, nnx.Optimizer(
      model, optim.make_optimizer(config.optim, steps_per_epoch), wrt=nnx.Param
    )

  replicated = NamedSharding(mesh, PartitionSpec())
  normalization = ""  # set by the initial weights, or by the checkpoint a restore reads
  if abstract:
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: with_optimizer(new_model())))
    state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes
    )
  else:
    model = new_model()
    if init_weights:
      normalization = load_initial_weights(model, config)
    graphdef, state = nnx.split(with_optimizer(model))
    state = replicate(state, replicated)
  return Setup(
    mesh=mesh,
    graphdef=graphdef,
    state=state,
    normalization=normalization,
    replicated=replicated,
    batch_sharding=NamedSharding(mesh, PartitionSpec("data")),
    num_classes=num_classes,
    steps_per_epoch=steps_per_epoch,
  )


def load_initial_weights(model, config) -> str:
  """Loads `config.init` (at most one source) into `model` and returns the input normalisation
  those weights were trained with; a model trained from scratch uses ImageNet's, like every 2D
  initialisation."""
  init = config.init
  if init.kinetics_i3d:
    load_kinetics_i3d(model, init.kinetics_i3d)
    return kinetics_weights.NORMALIZATION
  if init.checkpoint:
    meta = checkpoint_lib.latest_meta(init.checkpoint)
    if meta is None:
      raise FileNotFoundError(f"config.init.checkpoint: no checkpoint in {init.checkpoint}")
    # A fine-tuned re-id model may change its last stride; the rest is the network the weights
    # were trained in.
    config_lib.check_same_network(
      config, meta["config"], f"the checkpoint in {init.checkpoint}", may_differ=("last_stride",)
    )
    checkpoint_lib.load_params_for_finetuning(model, init.checkpoint, skip=("head", "classifier"))
    return meta["normalization"]
  if init.torchvision_resnet50:
    load_torchvision_resnet50(model, init.torchvision_resnet50, temporal_init=init.temporal_init)
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


def bind(graphdef, normalization: str, state, clips, *, train: bool):
  """`(model, optimizer, inputs)`: the model of `state` in training or evaluation mode, and the
  uint8 clips `[b, T, H, W, 3]` normalised as its weights expect. For jitted functions."""
  model, optimizer = nnx.merge(graphdef, state)
  if train:
    model.train()
  else:
    model.eval()
  return model, optimizer, data_lib.normalize_clips(clips, normalization)


def make_feature_fn(setup: Setup):
  """`(state, clips uint8 [b, T, H, W, 3] global) -> features [b, D]` in evaluation mode."""
  graphdef, normalization = setup.graphdef, setup.normalization

  def features(state, clips):
    model, _, inputs = bind(graphdef, normalization, state, clips, train=False)
    return model(inputs)["features"]

  return jax.jit(
    features,
    in_shardings=(setup.replicated, setup.batch_sharding),
    out_shardings=setup.batch_sharding,
  )


def setup_for(config, workdir, *, init_weights: bool):
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


def check_init_files(config) -> None:
  """A missing weights file fails in a second, before the dataset is prepared."""
  for field in config_lib.INIT_SOURCES:
    path = config.init[field]
    if path and not os.path.exists(path):
      raise FileNotFoundError(
        f"config.init.{field}: {path} does not exist{config_lib.INIT_DOWNLOADS.get(field, '')}"
      )


def checked_normalization(config, meta: dict, directory) -> str:
  """The restored run's input normalisation, after checking that `config` builds the network
  it trained (a shape-preserving difference, e.g. the stem pool's padding, would otherwise
  go unnoticed)."""
  config_lib.check_same_network(config, meta["config"], f"the checkpoint in {directory}")
  return meta["normalization"]


class MissingCheckpoint(FileNotFoundError):
  """The workdir has no checkpoint, or not the step asked for."""


def require_checkpoint(config, workdir) -> None:
  """The checkpoint `config.eval.step` asks for (default: any) exists in `workdir`, checked
  before anything else is done: naming what is there."""
  directory = os.path.join(workdir, "checkpoints")
  steps = []
  if os.path.isdir(directory):  # (a Checkpointer would create the folder)
    ckpt = checkpoint_lib.Checkpointer(directory, save_every_steps=1, handle_sigterm=False)
    try:
      steps = ckpt.all_steps()
    finally:
      ckpt.close()
  if not steps:
    raise MissingCheckpoint(
      f"no checkpoint in {directory}: config.mode={config.mode} needs a trained run's workdir"
    )
  if config.eval.step >= 0 and config.eval.step not in steps:
    raise MissingCheckpoint(
      f"config.eval.step: no checkpoint of step {config.eval.step} in {directory} "
      f"(there are {sorted(steps)})"
    )
  if config.eval.step >= 0:  # a damaged step asked for is named before the dataset is read
    ckpt = checkpoint_lib.Checkpointer(directory, save_every_steps=1, handle_sigterm=False)
    try:
      problem = ckpt.damage(config.eval.step)
    finally:
      ckpt.close()
    if problem:
      raise checkpoint_lib.CheckpointDamaged(
        f"Checkpoint {directory}/{config.eval.step} is damaged: {problem}."
      )


def restore_for_eval(config, workdir):
  require_checkpoint(config, workdir)
  data_dir, setup = setup_for(config, workdir, init_weights=False)
  return (data_dir, *_restore(config, workdir, setup))


def restore_model(config, workdir):
  """`(setup, step)` of the run's checkpoint for the modes that need no dataset (embed,
  search's inputs): the head's size comes from the checkpoint's metadata; checkpoints that do not
  record it are restored as `eval` restores them, with the dataset."""
  require_checkpoint(config, workdir)
  meta = checkpoint_lib.latest_meta(os.path.join(workdir, "checkpoints"))
  if meta is None or "num_classes" not in meta:
    return restore_for_eval(config, workdir)[1:]
  setup = build_state(
    config,
    num_classes=int(meta["num_classes"]),
    steps_per_epoch=1,
    mesh=make_mesh(),
    init_weights=False,
  )
  return _restore(config, workdir, setup)


def _restore(config, workdir, setup):
  ckpt = checkpoint_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), save_every_steps=1, handle_sigterm=False
  )
  try:
    step = None if config.eval.step < 0 else config.eval.step
    setup.state, meta = ckpt.restore(
      step, abstract_state=abstract_like(setup.state), model_name=config.model.name
    )
    setup.normalization = checked_normalization(config, meta, ckpt.directory)
  finally:
    ckpt.close()
  return setup, int(meta["step"])
