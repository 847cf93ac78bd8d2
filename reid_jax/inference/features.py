"""Per-tracklet features: the mean of the tracklet's T-frame chunk features.

`tracklet_features` runs a model over the chunk stream of any source (`chunks.chunk_batches`)
and `extract_features` averages: each batch's features are scatter-added into per-tracklet sums
on device. When the feature function returns a global array sharded over the devices of several
processes, the scatter into the replicated sums runs under jit across that mesh, so XLA
all-reduces the contributions and every process ends with the same [N, D] means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from reid_jax.inference.chunks import TrackletSource, chunk_batches
from reid_jax.inference.parallel import prefetch


def _accumulate(sums, counts, features, rows):
  # Rows outside [0, N) (padding) are dropped.
  sums = sums.at[rows].add(features.astype(jnp.float32), mode="drop")
  return sums, counts.at[rows].add(1.0, mode="drop")


def _global_rows(features, rows: np.ndarray):
  """Tracklet rows laid out like `features`' batch axis (global when features are sharded)."""
  sharding = getattr(features, "sharding", None)
  if isinstance(sharding, NamedSharding):
    row_sharding = NamedSharding(
      sharding.mesh, PartitionSpec(sharding.spec[0] if sharding.spec else None)
    )
    return jax.make_array_from_process_local_data(row_sharding, rows), NamedSharding(
      sharding.mesh, PartitionSpec()
    )
  if jax.process_count() > 1:
    raise ValueError(
      "with several processes, feature_fn must return a global array with a "
      "NamedSharding (e.g. jit with out_shardings over the data mesh)"
    )
  return rows, None


def extract_features(
  feature_fn: Callable, batches: Iterable[dict], num_tracklets: int
) -> np.ndarray:
  """Averages chunk features per tracklet over all `batches`.

  Args:
    feature_fn: `clips uint8 [b, T, H, W, 3] (this process's rows) -> [B, D]` features; either a
      global array sharded over a data mesh (B = all processes' rows, in process order, as
      `jax.make_array_from_process_local_data` lays them out) or, in a single process, any array.
    batches: dicts of `clips`, `tracklet` int [b] (row, -1 for padding) and `valid` bool [b], as
      `chunks.chunk_batches` yields them (a chunk's repeated frames are its own, and each chunk
      counts once).
    num_tracklets: N, the number of rows.
  Returns:
    float32 [N, D], the same on every process.
  Raises:
    ValueError: if some tracklet received no chunk.
  """
  sums = counts = accumulate = None
  for batch in batches:
    features = feature_fn(batch["clips"])
    rows = np.where(
      np.asarray(batch["valid"], bool), np.asarray(batch["tracklet"], np.int32), num_tracklets
    ).astype(np.int32)
    rows, replicated = _global_rows(features, rows)
    if accumulate is None:
      zeros = lambda shape: jax.device_put(jnp.zeros(shape, jnp.float32), replicated)
      sums, counts = zeros((num_tracklets, features.shape[-1])), zeros((num_tracklets,))
      accumulate = jax.jit(
        _accumulate,
        donate_argnums=(0, 1),
        out_shardings=(None if replicated is None else (replicated, replicated)),
      )
    sums, counts = accumulate(sums, counts, features, rows)
  if accumulate is None:
    raise ValueError("the chunk stream yielded no batch")
  counts = np.asarray(counts)
  if missing := int((counts == 0).sum()):
    raise ValueError(f"{missing} of {num_tracklets} tracklets received no chunk")
  return np.asarray(sums) / counts[:, None]


def tracklet_features(model, source: TrackletSource, data_config, *, progress=None) -> np.ndarray:
  """`[N, D]` features of every tracklet of `source` (the same on every process) by `model`
  (an `InferenceModel`), with the clip size and global batch of `data_config` (`config.data`:
  `num_frames`, `height`, `width`, `eval_batch_size`). The next batches are read and assembled
  in a thread while the device computes (two ahead at most)."""
  d = data_config
  batches = chunk_batches(
    source,
    num_frames=d.num_frames,
    height=d.height,
    width=d.width,
    batch_size=d.eval_batch_size,
    progress=progress,
  )
  return extract_features(model.features, prefetch(batches, 2), len(source.num_frames))
