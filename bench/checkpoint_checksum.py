r"""The cost of checkpoint checksums against the save itself.

    python bench/checkpoint_checksum.py [--config configs/mars.py]

Builds the config's training state (random weights, Adam state included), saves it with
`reid_jax.checkpoints.CheckpointWriter` (synchronously), then times recording the step's
checksums (what process 0 does once a step is committed) and checking them (what a restore does
first), beside the save and the restores themselves: the whole state, as a resumed run reads it,
and the model part alone, as every inference mode reads it (`CheckpointReader.restore_part`).
"""

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "mars.py"))
  args = parser.parse_args()

  import random_model

  from reid_jax import sharding
  from reid_jax import state as state_lib
  from reid_jax.checkpoints import CheckpointReader, CheckpointWriter, checksums

  config, setup, state = random_model.train_state(args.config)
  _, model_state = state_lib.model_part(setup, state)
  folder = tempfile.mkdtemp(prefix="reid_jax_checksum_bench_")
  ckpt = CheckpointWriter(folder, save_every_steps=1, async_save=False, handle_sigterm=False)
  start = time.perf_counter()
  ckpt.maybe_save(1, state=state, meta={"step": 1, "model": config.model.name})
  ckpt._manager.wait_until_finished()
  save_s = time.perf_counter() - start
  start = time.perf_counter()
  checksums.record_missing(folder, [1])
  record_s = time.perf_counter() - start
  ckpt.close()
  start = time.perf_counter()
  assert checksums.damage(folder, 1) is None
  check_s = time.perf_counter() - start
  start = time.perf_counter()
  with CheckpointReader(folder) as reader:
    reader.restore(reader.resolve(1), target=sharding.abstract_like(state))
  restore_s = time.perf_counter() - start  # includes the check
  start = time.perf_counter()
  with CheckpointReader(folder) as reader:
    reader.restore_part(reader.resolve(1), "0", target=sharding.abstract_like(model_state))
  model_s = time.perf_counter() - start
  size = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(folder) for n in ns)
  print(f"{config.model.name}: checkpoint of {size / 2**20:.0f} MiB, {os.cpu_count()} CPUs")
  print(
    f"  save     {save_s:6.2f} s; recording the checksums {record_s:6.2f} s ({record_s / save_s:.0%})"
  )
  print(f"  restore  {restore_s:6.2f} s, of which checking the checksums {check_s:6.2f} s")
  print(f"  restore of the model part alone (inference) {model_s:6.2f} s")


if __name__ == "__main__":
  main()
