"""`reid_jax.host_runtime`: a CPU program's temporary buffer is not faulted in anew each call."""

import json
import subprocess
import sys

import pytest

from reid_jax import host_runtime

# Runs a jitted program whose temporary buffer holds a 64 MB matmul output and its reversal
# (128 MB), four times, and prints the temporary's size and the process's minor page faults
# during calls 2-4.
SCRIPT = r"""
import json, resource, sys
import jax, jax.numpy as jnp
from reid_jax import host_runtime
if sys.argv[1] == "configured":
  host_runtime.configure_before_backends()
  applied = host_runtime.keep_freed_memory()
else:
  applied = None
x = jnp.ones((32768, 16), jnp.float32)
w, w2 = jnp.ones((16, 512), jnp.float32), jnp.ones((512, 4), jnp.float32)
program = jax.jit(lambda x, w, w2: jnp.sum((x @ w)[::-1] @ w2)).lower(x, w, w2).compile()
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  program(x, w, w2).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
temp = program.memory_analysis().temp_size_in_bytes
print(json.dumps(dict(temp=temp, faults=faults[1:], applied=applied)))
"""


def run(setting: str) -> dict:
  out = subprocess.run(
    [sys.executable, "-c", SCRIPT, setting], capture_output=True, text=True, check=True
  )
  return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_steps_reuse_their_temporary_buffer():
  default, configured = run("default"), run("configured")
  pages = configured["temp"] // 4096
  assert configured["temp"] >= 128 * 2**20  # the program does hold a large temporary
  assert configured["applied"] is True
  # With JAX's defaults every call faults the temporary in again (what the module is for)...
  assert min(default["faults"]) > pages // 2, default
  # ...and with it the calls after the first reuse the same pages.
  assert max(configured["faults"]) < pages // 20, configured


def test_keep_freed_memory_without_glibc(monkeypatch):
  """A C library without glibc's mallopt is left as it is."""
  monkeypatch.setattr(host_runtime.ctypes.util, "find_library", lambda name: "libnot_a_libc.so")
  assert host_runtime.keep_freed_memory() is False
