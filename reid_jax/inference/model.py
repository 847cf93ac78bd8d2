"""`InferenceModel`: a trained network frozen for inference, and `restore`, which makes one from
the model part of a checkpoint alone.

Restoring reads the checkpoint's metadata and its model variables (parameters, BatchNorm
statistics), nothing else: no optimiser state is built or read, no dataset is read or built, no
initial-weights file is needed; the identity classifier's size comes from the checkpoint. The
network is built from the config, which must describe the network the checkpoint trained
(`reid_jax.config.check_same_network`); the input normalisation is the checkpoint's.

Every inference mode starts from one (`eval`, `extract`, `calibrate`, `embed`, `export`), and the
trainer's periodic evaluation wraps its live weights in one, so there is one way to compute a
feature: `features` for batches sharded over the mesh, `serving_function` for export.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from reid_jax import config as config_lib
from reid_jax import sharding
from reid_jax.checkpoints import CheckpointReader, MissingCheckpoint
from reid_jax.data.normalize import normalize_clips
from reid_jax.models import create_model

CLASSIFIER_KERNEL = "0/head/classifier/kernel/value"  # in the saved (model, optimizer) state


def apply(graphdef, normalization: str, state, clips, *, return_attention: bool = False) -> dict:
  """The network of `(graphdef, state)` in evaluation mode on uint8 clips `[b, T, H, W, 3]`,
  normalised as its weights expect: its output dict. A pure function, for jit and export."""
  model = nnx.merge(graphdef, state)
  model.eval()
  return model(normalize_clips(clips, normalization), return_attention=return_attention)


@functools.lru_cache(maxsize=None)
def _feature_program(graphdef, normalization: str, mesh):
  """`(state, clips global [B, T, H, W, 3]) -> features [B, D]`, the batch sharded over `mesh`
  (one compiled program per network, normalisation and mesh: the trainer's evaluations reuse
  it)."""
  return jax.jit(
    lambda state, clips: apply(graphdef, normalization, state, clips)["features"],
    in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
    out_shardings=sharding.batch_sharded(mesh),
  )


@functools.lru_cache(maxsize=None)
def _attention_program(graphdef, normalization: str):
  return jax.jit(
    lambda state, clips: apply(graphdef, normalization, state, clips, return_attention=True)[
      "attention"
    ]
  )


@dataclasses.dataclass(frozen=True, eq=False)
class InferenceModel:
  """A trained network for inference.

  Attributes:
    graphdef: the network's graph (an `nnx.GraphDef` of a `ReIDNet`).
    state: its variables (parameters, BatchNorm statistics), replicated over `mesh`.
    normalization: the input statistics its weights expect (`reid_jax.data.normalize`).
    step: the training step of the weights.
    meta: the checkpoint's metadata (model, dataset, number of classes, the run's config...).
    mesh: the `data` mesh batches are sharded over.
  """

  graphdef: Any
  state: Any
  normalization: str
  step: int
  meta: dict
  mesh: jax.sharding.Mesh

  @functools.cached_property
  def arch(self):
    """The network's `Architecture`."""
    return nnx.merge(self.graphdef, self.state).arch

  @property
  def batch_sharding(self):
    return sharding.batch_sharded(self.mesh)

  def features(self, clips: np.ndarray) -> jax.Array:
    """This process's clips (uint8 `[b, T, H, W, 3]`, `b` the global batch over processes) ->
    the global `[B, D]` features, sharded over the mesh like the batch."""
    program = _feature_program(self.graphdef, self.normalization, self.mesh)
    return program(self.state, jax.make_array_from_process_local_data(self.batch_sharding, clips))

  @functools.cached_property
  def fingerprint(self) -> str:
    """A digest of the weights (SHA-256 of every variable, 16 hex digits): the same for the same
    model wherever its checkpoint lies; what embeddings and thresholds record to be compared."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(self.local_state()))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()[:16]

  def local_state(self):
    """The variables as this process's own arrays (one copy of the replicated ones)."""
    return jax.tree.map(lambda x: x.addressable_data(0), self.state)

  def attention(self, clip: np.ndarray) -> list[dict]:
    """The non-local blocks' attention on one clip `[T, H, W, 3]`, computed by this process
    alone: per block `weights [1, Nq, Nk]` and the `query_grid`, `key_grid` (t, h, w)."""
    out = _attention_program(self.graphdef, self.normalization)(self.local_state(), clip[None])
    return [
      {
        "weights": np.asarray(a["weights"]),
        "query_grid": tuple(int(v) for v in a["query_grid"]),
        "key_grid": tuple(int(v) for v in a["key_grid"]),
      }
      for a in out
    ]

  def serving_function(self):
    """`clips uint8 [b, T, H, W, 3] -> float32 [b, D]`, the weights and the normalisation
    inside as constants: a pure function of the clips, for `jax.export` and jax2tf."""
    graphdef, normalization = self.graphdef, self.normalization
    state = jax.device_get(self.local_state())

    def features(clips):
      return apply(graphdef, normalization, state, clips)["features"].astype(jnp.float32)

    return features


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """A checkpoint step found, intact and of the config's network (`find_checkpoint`)."""

  directory: str
  step: int
  meta: dict


def find_checkpoint(config, workdir: str) -> CheckpointRef:
  """The step `config.eval.step` asks for (default the newest intact one) in
  `<workdir>/checkpoints`, checked to exist, to be intact and to hold the network `config`
  builds: cheap, so modes call it before anything else.

  Raises:
    MissingCheckpoint, CheckpointDamaged: naming the folder and the steps there.
    NetworkMismatch: naming the first `config.model` field the checkpoint's run had otherwise.
  """
  directory = os.path.join(workdir, "checkpoints")
  with CheckpointReader(directory) as reader:
    if not reader.steps():
      raise MissingCheckpoint(
        f"no checkpoint in {directory}: config.mode={config.mode} needs a trained run's workdir"
      )
    requested = None if config.eval.step < 0 else int(config.eval.step)
    step = reader.resolve(requested, field="config.eval.step")
    meta = reader.meta(step)
  config_lib.check_same_network(config, meta["config"], f"the checkpoint in {directory}")
  return CheckpointRef(directory, step, meta)


def restore(config, workdir: str, *, checkpoint: CheckpointRef | None = None, mesh=None):
  """The `InferenceModel` of `checkpoint` (default `find_checkpoint(config, workdir)`), its
  variables replicated over `mesh` (default every device of every process). Every process must
  call it."""
  checkpoint = checkpoint or find_checkpoint(config, workdir)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  with CheckpointReader(checkpoint.directory) as reader:
    num_classes = checkpoint.meta.get("num_classes")
    if num_classes is None:  # written before the metadata recorded it
      num_classes = reader.saved_shapes(checkpoint.step)[CLASSIFIER_KERNEL][-1]
    graphdef, abstract = nnx.split(
      nnx.eval_shape(
        lambda: create_model(
          config.model.name,
          num_classes=int(num_classes),
          rngs=nnx.Rngs(0),
          **config_lib.model_overrides(config),
        )
      )
    )
    target = sharding.abstract_like(abstract, sharding.replicated(mesh))
    state = reader.restore_part(checkpoint.step, "0", target=target, model_name=config.model.name)
  return InferenceModel(
    graphdef=graphdef,
    state=state,
    normalization=checkpoint.meta["normalization"],
    step=int(checkpoint.step),
    meta=checkpoint.meta,
    mesh=mesh,
  )
