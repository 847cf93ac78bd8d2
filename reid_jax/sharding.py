"""The one-axis `data` mesh of every device of every process, and host values placed on it.

Training and inference share it: the batch (clips, chunks, gallery rows) is split over `data`
and everything else (parameters, BatchNorm statistics, queries) is replicated, so XLA inserts the
cross-device reductions itself.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A one-axis `data` mesh of `devices` (default: every device of every process)."""
  count = len(devices) if devices is not None else jax.device_count()
  return jax.make_mesh(
    (count,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


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


def abstract_like(tree, sharding: NamedSharding | None = None):
  """Shapes, dtypes and shardings of a tree of arrays or shapes (a restore target): every
  leaf's own sharding, or `sharding` for all."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree
  )


def global_batch(local: dict, sharding: NamedSharding) -> dict:
  """Each process's rows -> one global array per key, sharded over `data`."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
