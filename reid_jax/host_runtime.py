"""How a process runs XLA CPU programs: steps on the calling thread, their buffers kept.

XLA CPU gives each execution of a compiled program one temporary buffer as large as the
program's peak working set (1.37 GB for the paper's network's train step at batch 2) and frees
it when the execution ends. With JAX's default asynchronous CPU dispatch the program runs on a
worker thread, whose glibc arena serves such a block with a fresh `mmap` and returns it with
`munmap`: every step then faults in every page of its working set anew (350,000 page faults
and 2-7 s of kernel time per batch-2 step on a 2-core VM, against the step's 4.5 s of compute;
bench/README.md). `configure_before_backends` runs programs on the calling thread instead
(`jax_cpu_enable_async_dispatch`), and `keep_freed_memory` makes glibc serve large blocks
from its heap and keep what is freed (`mallopt`), so each step reuses the pages of the last.
A process's resident memory then stays at its peak instead of falling between steps.

A program over several CPU devices (`--cpu_devices`, or XLA's
`--xla_force_host_platform_device_count`) runs each device's part on a worker thread, whose
arena still maps its buffers afresh; so does a worker of a single-device run for blocks it
allocates itself (bench/README.md). Making every thread share glibc's main arena
(`M_ARENA_MAX` 1) removed those faults too, but made the single-device step slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import jax

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely" (a positive value is
# an int, at most 2 GiB: less than the train step's temporary buffer at the paper's batch 8).
NO_TRIMMING = -1


def configure_before_backends() -> None:
  """Runs CPU programs synchronously, on the thread that calls them. Takes effect only before
  JAX makes its CPU backend (the first computation or device query); accelerators' dispatch is
  not affected."""
  jax.config.update("jax_cpu_enable_async_dispatch", False)


def keep_freed_memory() -> bool:
  """On glibc, serves large allocations from the heap (no `mmap`) and keeps freed memory for
  reuse instead of giving it back to the system. Returns whether it applied: False where the C
  library is not glibc (musl, macOS), which keeps its default behaviour."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # noqa: B018  (glibc's own symbol: mallopt's meaning is glibc's)
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NO_TRIMMING) == 1
  if not applied:
    log.warning("mallopt refused the settings; CPU steps may page-fault their buffers")
  return applied
