r"""Seconds to make a training run's initial state (random weights and Adam's), three ways.

    python bench/init_state.py [--config configs/synthetic.py] [--num_classes 625]

Each way runs in a fresh process without JAX's persistent compilation cache, as a run's start-up
does:
- `build_state`: what training runs (`reid_jax.state.build_state`: the weights drawn by one
  jitted program with the original threefry, then the optimiser's state, also jitted);
- `eager`: the same modules made op by op (every initialiser compiles an op for each distinct
  shape), JAX's default partitionable threefry;
- `eager_original_threefry`: op by op, the original threefry.
"""

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS = ("build_state", "eager", "eager_original_threefry")


def measure(config_path: str, way: str, num_classes: int) -> float:
  """Seconds of `way` in this process (its first time: every compile included)."""
  import jax

  sys.path.insert(0, os.path.join(REPO, "bench"))
  import random_model

  from reid_jax import sharding
  from reid_jax import state as state_lib

  config = random_model.load(config_path)
  start = time.perf_counter()
  if way == "build_state":
    _, state = state_lib.build_state(
      config, num_classes=num_classes, steps_per_epoch=1, mesh=sharding.make_mesh()
    )
  else:
    with jax.threefry_partitionable(way == "eager"):
      model = state_lib._new_model(config, num_classes)
    state = state_lib._with_optimizer(model, config, 1)
  jax.block_until_ready(jax.tree.leaves(state))
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "synthetic.py"))
  parser.add_argument("--num_classes", type=int, default=625)
  parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process
  args = parser.parse_args()
  if args.way:
    print(f"{measure(args.config, args.way, args.num_classes):.2f}")
    return
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  print(f"{os.path.relpath(args.config, REPO)}, {args.num_classes} classes, one fresh process each")
  for way in WAYS:
    out = subprocess.run(
      [sys.executable, __file__, "--config", args.config, "--num_classes", str(args.num_classes)]
      + ["--way", way],
      env=env,
      capture_output=True,
      text=True,
      check=True,
    )
    print(f"  {way:<26} {float(out.stdout.split()[-1]):7.2f} s")


if __name__ == "__main__":
  main()
