"""The timing the per-layer benchmarks share (bench/ is no package: they import it as a sibling)."""

import time

import numpy as np


def median_seconds(call, reps: int) -> float:
  """Median wall seconds of `reps` calls of `call()` after one warm-up call (the compile);
  `call` must wait for its own result (e.g. `jax.block_until_ready`)."""
  call()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return float(np.median(times))
