"""The timing the per-layer benchmarks share (bench/ is no package: they import it as a sibling)."""

import time

import numpy as np


def seconds(call) -> float:
  """Wall seconds of one call of `call()`, which must wait for its own result (e.g.
  `jax.block_until_ready`); benchmarks that take their forms in turns time each turn with it."""
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def median_seconds(call, reps: int) -> float:
  """Median wall seconds of `reps` calls of `call()` after one warm-up call (the compile)."""
  call()
  return float(np.median([seconds(call) for _ in range(reps)]))
