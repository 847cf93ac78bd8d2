r"""`search`'s exact top-k against the bare distance matmul, and its memory against the gallery.

    python bench/search.py [--queries 1000 --gallery 250000 1000000 --dim 512 --k 10]

For each gallery size, in fresh subprocesses (so each peak is its own): random float32 features;
the floor, `queries @ gallery.T` as one jitted matmul on device-resident inputs; and
`reid_jax.retrieval.top_k` (the gallery sharded over the devices, blocked distances, masking and
running top-k merge), timed twice: the whole call, which takes host arrays and places the
gallery's shards itself, and its program alone on device-resident shards (what the matmul is
compared with). Each is run once to compile and once timed.
Memory is what the compiled program needs besides its inputs, its outputs and temporaries as XLA
reports them (`memory_analysis`): for the matmul its [Q, G] output, for `top_k` the program that
scans the gallery's blocks of one query block.
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

  from reid_jax import retrieval, sharding

  rng = np.random.default_rng(0)
  q_host = rng.standard_normal((queries, dim), dtype=np.float32)
  g_host = rng.standard_normal((gallery, dim), dtype=np.float32)
  if what == "matmul":
    q, g = jax.device_put(q_host), jax.device_put(g_host)
    jax.block_until_ready(g)
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST))
    run = lambda: matmul(q, g).block_until_ready()
    compiled = matmul.lower(q, g).compile()
  else:
    run = lambda: retrieval.top_k(q_host, g_host, k)
    mesh = sharding.make_mesh()
    layout = retrieval.top_k_layout(queries, gallery, k, mesh=mesh)
    global_rows = layout.shard_rows * mesh.size
    rows = lambda shape, dtype: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding.batch_sharded(mesh)
    )
    replicated = lambda shape, dtype: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding.replicated(mesh)
    )
    compiled = (
      retrieval.top_k_program(mesh, k, "euclidean", layout)
      .lower(
        replicated((layout.query_rows, dim), jnp.float32),
        {},
        rows((global_rows, dim), jnp.float32),
        {},
        rows((global_rows,), jnp.bool_),
      )
      .compile()
    )
  run()  # compiles
  start = time.perf_counter()
  run()
  seconds = time.perf_counter() - start
  program_seconds = seconds
  if what == "top_k":
    arrays = (
      sharding.replicate(
        retrieval.pad_rows(q_host[: layout.query_rows], layout.query_rows),
        sharding.replicated(mesh),
      ),
      {},
      retrieval._sharded_rows(g_host, global_rows, 0.0, mesh),
      {},
      retrieval._sharded_rows(np.ones(gallery, bool), global_rows, False, mesh),
    )
    jax.block_until_ready(arrays)
    program = retrieval.top_k_program(mesh, k, "euclidean", layout)
    blocks = -(-queries // layout.query_rows)
    start = time.perf_counter()
    jax.block_until_ready(program(*arrays))
    program_seconds = blocks * (time.perf_counter() - start)
  memory = compiled.memory_analysis()
  # What the program needs besides its inputs: its outputs and its temporaries (XLA's figures).
  extra = (memory.output_size_in_bytes + memory.temp_size_in_bytes) / 2**20
  print(json.dumps(dict(seconds=seconds, program_seconds=program_seconds, extra_mib=extra)))


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
    f"{'gallery':>9} {'matmul s':>9} {'top_k program s':>16} {'ratio':>6} {'top_k call s':>13} "
    f"{'matmul +MiB':>12} {'top_k +MiB':>11}"
  )
  for gallery, r in rows:
    m, t = r["matmul"], r["top_k"]
    print(
      f"{gallery:>9} {m['seconds']:>9.2f} {t['program_seconds']:>16.2f} "
      f"{t['program_seconds'] / m['seconds']:>6.2f} {t['seconds']:>13.2f} "
      f"{m['extra_mib']:>12.0f} {t['extra_mib']:>11.0f}"
    )


if __name__ == "__main__":
  main()
