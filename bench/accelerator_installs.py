r"""The GPU and TPU installs resolve with the pinned set: pip's resolver on PyPI, nothing installed.

    python bench/accelerator_installs.py [--only cuda12|tpu|runtime-cuda12|runtime-tpu]

Runs `pip install --dry-run --ignore-installed --report` for
- `requirements-cuda12.txt` and `requirements-tpu.txt` (requirements.txt, the whole pinned and
  tested set, with `jax[cuda12]` or `jax[tpu]` at the pinned JAX), and
- this package's runtime (`.`, no extras, built from the checkout) with the same `jax[...]`
  line, which is what a serving machine installs,
and prints, for each, whether it resolved, the JAX packages it chose (jax, jaxlib, the CUDA
plugin or libtpu), and how many packages it would install. It needs PyPI (metadata only: pip
reads the wheels' metadata files, it downloads no wheel it can avoid).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX = "0.10.2"
CASES = {
  "cuda12": ["-r", os.path.join(REPO, "requirements-cuda12.txt")],
  "tpu": ["-r", os.path.join(REPO, "requirements-tpu.txt")],
  "runtime-cuda12": [REPO, f"jax[cuda12]=={JAX}"],
  "runtime-tpu": [REPO, f"jax[tpu]=={JAX}"],
}
SHOWN = (
  "jax",
  "jaxlib",
  "jax-cuda12-plugin",
  "jax-cuda12-pjrt",
  "libtpu",
  "flax",
  "orbax-checkpoint",
)


def resolve(name: str, args: list[str]) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    report = os.path.join(tmp, "report.json")
    start = time.perf_counter()
    result = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q"]
      + ["--report", report, *args],
      capture_output=True,
      text=True,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
      print(f"{name}: does not resolve ({seconds:.0f} s)\n{result.stderr[-3000:]}")
      return
    with open(report) as f:
      chosen = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(f)["install"]
      }
  shown = ", ".join(f"{k} {chosen[k]}" for k in SHOWN if k in chosen)
  print(f"{name}: resolves in {seconds:.0f} s, {len(chosen)} packages: {shown}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", choices=sorted(CASES))
  args = parser.parse_args()
  for name, pip_args in CASES.items():
    if args.only in (None, name):
      resolve(name, pip_args)


if __name__ == "__main__":
  main()
