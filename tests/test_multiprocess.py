"""Two local processes x 2 CPU devices train exactly like one process x 4 devices."""

import json
import os
import socket
import subprocess

import numpy as np

from reid_jax import train
from tiny_training import tiny_config, tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = {"optim.total_epochs": 2, "optim.decay_start_epoch": 1}  # 4 steps


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_losses(workdir) -> dict[int, float]:
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {d["step"]: d["train/loss"] for d in lines if "train/loss" in d}


def final_eval(workdir) -> dict:
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [d for d in lines if "eval/rank1" in d][-1]


def test_two_processes_match_one_and_their_checkpoint_restores(data_dir, tmp_path):
  two = tmp_path / "two_processes"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PORT=str(free_port()), CPU_DEVICES_PER_PROCESS="2")
  result = subprocess.run(
      ["./launch.sh", "local", "2", "--config=configs/synthetic.py", f"--workdir={two}",
       *tiny_flags(data_dir, **SHORT)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  other = (two / "process_1.log").read_text() if (two / "process_1.log").exists() else ""
  assert result.returncode == 0, result.stdout + result.stderr + other
  assert "4 devices (cpu) over 2 processes" in result.stderr, result.stderr

  one = tmp_path / "one_process"  # this pytest process has 4 CPU devices (conftest)
  train.train_and_evaluate(tiny_config(data_dir, **SHORT), str(one))

  losses_two, losses_one = train_losses(two), train_losses(one)
  assert sorted(losses_two) == [1, 2, 3, 4]
  assert losses_two.keys() == losses_one.keys()
  for step in losses_one:
    np.testing.assert_allclose(losses_two[step], losses_one[step], rtol=1e-5,
                               err_msg=f"step {step}")

  # The checkpoint written by the 2-process run is restored by a 1-process eval.
  restored = train.evaluate_checkpoint(tiny_config(data_dir, mode="eval", **SHORT), str(two))
  assert restored["step"] == 4
  written = final_eval(two)
  np.testing.assert_allclose(restored["mAP"], written["eval/mAP"], rtol=1e-5)
  np.testing.assert_allclose(restored["rank1"], written["eval/rank1"], rtol=1e-5)
