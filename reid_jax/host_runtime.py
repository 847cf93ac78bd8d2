"""How a process runs XLA CPU programs: on the calling thread, buffers kept, convolutions on Eigen.

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

XLA CPU runs a convolution on YNNPACK by default. On the network's shapes its Eigen
convolutions are 2.2x faster over all their passes and 1.6-4.2x on the stem's and res2's
(forward, input and kernel gradients; bench/README.md), so
`configure_before_backends` also removes YNNPACK's convolution fusion (`use_eigen_convolutions`);
`reid_jax.models.cpu_conv` reads which of the two runs (`ynn_convolutions`) to shape its CPU
convolutions for it.

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
import os

import jax

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely" (a positive value is
# an int, at most 2 GiB: less than the train step's temporary buffer at the paper's batch 8).
NO_TRIMMING = -1

# XLA CPU's list of the op kinds YNNPACK fuses: exact names, or names signed '+'/'-' to add to or
# remove from its default list, which has the convolutions (`individual_convolution`).
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{YNN_FUSION_FLAG}=-individual_convolution"


def configure_before_backends() -> None:
  """Runs CPU programs synchronously, on the thread that calls them, and their convolutions on
  Eigen (`use_eigen_convolutions`). Takes effect only before JAX makes its CPU backend (the
  first computation or device query); accelerators are not affected."""
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  use_eigen_convolutions()


def _ynn_fusion_types(xla_flags: str) -> list[str] | None:
  """The fusion types the last `--xla_cpu_experimental_ynn_fusion_type` of `xla_flags` gives,
  or None where it has none."""
  values = [f.split("=", 1)[1] for f in xla_flags.split() if f.startswith(YNN_FUSION_FLAG + "=")]
  return values[-1].split(",") if values else None


def use_eigen_convolutions() -> bool:
  """Makes XLA CPU run convolutions on Eigen rather than YNNPACK, by adding `EIGEN_CONVOLUTIONS`
  to `XLA_FLAGS`, unless `XLA_FLAGS` already sets YNNPACK's fusion types (a user's choice,
  kept). Takes effect only before JAX makes its CPU backend. Returns whether it added the flag."""
  flags = os.environ.get("XLA_FLAGS", "")
  if _ynn_fusion_types(flags) is not None:
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
  return True


def ynn_convolutions() -> bool:
  """Whether `XLA_FLAGS` leaves this process's CPU convolutions to YNNPACK (XLA's default): it
  does unless its YNNPACK fusion types remove `individual_convolution` or, given as exact names,
  omit it. XLA reads `XLA_FLAGS` once, when JAX makes its CPU backend: set it before."""
  types = _ynn_fusion_types(os.environ.get("XLA_FLAGS", ""))
  if types is None:
    return True
  if all(t and t[0] in "+-" for t in types):
    return "-individual_convolution" not in types
  return "individual_convolution" in types


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
