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


@pytest.mark.parametrize(
  "xla_flags, added, ynn",
  [
    ("", True, False),
    ("--xla_force_host_platform_device_count=4", True, False),
    ("--xla_cpu_experimental_ynn_fusion_type=+eltwise", False, True),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-dot", False, False),
    ("--xla_cpu_experimental_ynn_fusion_type=dot,individual_convolution", False, True),
    ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise", False, False),
  ],
)
def test_use_eigen_convolutions(monkeypatch, xla_flags, added, ynn):
  """The flag goes into XLA_FLAGS beside the others, a user's own YNNPACK fusion types are kept,
  and `ynn_convolutions` reads which engine XLA_FLAGS gives the convolutions."""
  monkeypatch.setenv("XLA_FLAGS", xla_flags)
  assert host_runtime.ynn_convolutions() is (True if added else ynn)  # before: XLA's default
  assert host_runtime.use_eigen_convolutions() is added
  flags = host_runtime.os.environ["XLA_FLAGS"]
  assert flags == (f"{xla_flags} {host_runtime.EIGEN_CONVOLUTIONS}".strip() if added else xla_flags)
  assert host_runtime.ynn_convolutions() is ynn


# Compiles a 3x3 convolution of 64 channels, and the gradient of `cpu_conv`'s custom VJP of it
# and of XLA's conv on 16 frames (which YNNPACK's form cuts into kernel-gradient chunks of 2
# frames), and prints whether the compiled conv is a YNNPACK fusion, the convolutions of each
# gradient, and their largest difference.
CONV_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from reid_jax import host_runtime
from reid_jax.models import cpu_conv
if sys.argv[1] == "configured":
  host_runtime.configure_before_backends()
rng = np.random.default_rng(0)
frames = jnp.asarray(rng.normal(size=(16, 32, 32, 64)), jnp.float32)
kernel = jnp.asarray(rng.normal(size=(3, 3, 64, 64)), jnp.float32)
loss = lambda conv: jax.jit(jax.grad(lambda f, k: jnp.sum(conv(f, k, 1) ** 2), argnums=(0, 1)))
ours, xla = loss(cpu_conv.frame_conv_tapwise), loss(cpu_conv.frame_conv)
forward = jax.jit(lambda f, k: cpu_conv.frame_conv(f, k, 1)).lower(frames, kernel).compile()
convs = lambda g: g.lower(frames, kernel).compile().as_text().count(" convolution(")
diff = max(
  float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
  for a, b in zip(ours(frames, kernel), xla(frames, kernel))
)
print(json.dumps(dict(
  ynn=host_runtime.ynn_convolutions(), ynn_fusion="ynn_fusion" in forward.as_text(),
  convs=convs(ours), xla_convs=convs(xla), diff=diff,
)))
"""


def test_configured_process_runs_whole_eigen_convolutions():
  """Configured, XLA CPU compiles the conv outside YNNPACK and `cpu_conv` gives it XLA's own
  gradient convolutions on the whole batch (no chunks); by default YNNPACK runs it, chunked."""
  env = {k: v for k, v in host_runtime.os.environ.items() if k != "XLA_FLAGS"}
  results = {}
  for setting in ("default", "configured"):
    out = subprocess.run(
      [sys.executable, "-c", CONV_SCRIPT, setting],
      capture_output=True,
      text=True,
      check=True,
      env=env,
    )
    results[setting] = json.loads(out.stdout.splitlines()[-1])
  default, configured = results["default"], results["configured"]
  assert default["ynn"] and default["ynn_fusion"], default
  assert default["convs"] > default["xla_convs"], default  # the kernel gradient's chunks
  assert not configured["ynn"] and not configured["ynn_fusion"], configured
  assert configured["convs"] == configured["xla_convs"] == 3, configured
  for result in results.values():
    assert result["diff"] < 1e-5, result
