r"""`search`'s exact top-k against the bare distance matmul, and its memory against the gallery.

    python bench/search.py [--queries 1000 --gallery 250000 1000000 --dim 512 --k 10]

For each gallery size, in fresh subprocesses (so each peak is its own): random float32 features;
the floor, `queries @ gallery.T` as one jitted matmul; and `reid_jax.footage.search.top_k` (the
blocked distances, masking and running top-k merge). Both get their inputs on the device (placing
them there is a copy on a CPU, which neither time counts). Each is run once to compile and once
timed.
Memory is what the compiled program needs besides its inputs, its outputs and temporaries as XLA
reports them (`memory_analysis`): for the matmul its [Q, G] output, for `top_k` the program that
scans the gallery's blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _child(what: str, queries: int, gallery: int, dim: int, k: int) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from reid_jax.footage import search

  rng = np.random.default_rng(0)
  q = jax.device_put(rng.standard_normal((queries, dim), dtype=np.float32))
  g = jax.device_put(rng.standard_normal((gallery, dim), dtype=np.float32))
  jax.block_until_ready(g)
  if what == "matmul":
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
    run = lambda: matmul(q, g).block_until_ready()
    compiled = matmul.lower(q, g).compile()
  else:
    run = lambda: search.top_k(q, g, k)
    q_block, g_block = search.block_shape(queries, gallery, k)
    compiled = search._scan_gallery.lower(
      jnp.zeros((q_block, k)),
      jnp.zeros((q_block, k), jnp.int32),
      q[:q_block],
      jnp.zeros(q_block, jnp.int32),
      g,
      jnp.zeros(gallery, jnp.int32),
      np.int32(0),
      np.int32(gallery),
      k=k,
      metric="euclidean",
      exclude_same_camera=False,
      block=g_block,
      num_blocks=gallery // g_block,
      padded=False,
    ).compile()
  run()  # compiles
  start = time.perf_counter()
  run()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  # What the program needs besides its inputs: its outputs and its temporaries (XLA's figures).
  extra = (memory.output_size_in_bytes + memory.temp_size_in_bytes) / 2**20
  print(json.dumps(dict(seconds=seconds, extra_mib=extra)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--gallery", type=int, nargs="+", default=[250000, 1000000])
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--child", nargs=5, help="internal")
  args = parser.parse_args()
  if args.child:
    what, *numbers = args.child
    _child(what, *map(int, numbers))
    return
  rows = []
  for gallery in args.gallery:
    result = {}
    for what in ("matmul", "top_k"):
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          "--child",
          what,
          str(args.queries),
          str(gallery),
          str(args.dim),
          str(args.k),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
      )
      if out.returncode:
        raise SystemExit(out.stderr)
      result[what] = json.loads(out.stdout.strip().splitlines()[-1])
      print(gallery, what, result[what], flush=True)
    rows.append((gallery, result))
  print(
    f"\n{args.queries} queries x gallery, {args.dim}-d float32, k={args.k}, {os.cpu_count()} CPUs"
  )
  print(
    f"{'gallery':>9} {'matmul s':>9} {'top_k s':>8} {'ratio':>6} {'matmul +MiB':>12} {'top_k +MiB':>11}"
  )
  for gallery, r in rows:
    m, t = r["matmul"], r["top_k"]
    print(
      f"{gallery:>9} {m['seconds']:>9.2f} {t['seconds']:>8.2f} {t['seconds'] / m['seconds']:>6.2f} "
      f"{m['extra_mib']:>12.0f} {t['extra_mib']:>11.0f}"
    )


if __name__ == "__main__":
  main()
