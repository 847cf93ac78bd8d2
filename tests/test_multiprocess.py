"""Two local processes x 2 CPU devices train exactly like one process x 4 devices; their
checkpoint evaluates alike in 1 process and in 2 processes started through an emulated srun, and
embeds a user's footage alike in 2 processes and in 1."""

import json
import os
import random
import signal
import socket
import subprocess

import numpy as np
from test_launch import clean_env, write_fake_srun

from reid_jax import train
from reid_jax.evaluation import runner

from tiny_training import tiny_config, tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 steps. At the demo's rate (3e-3) this 4-channel network's training is chaotic: float
# rounding that differs between the two device layouts grows 10-100x a step, so the layouts
# are compared at the paper's rate, where the same computation gives the same losses.
# What is compared is how the runs spread the work over processes, not the architecture (whose
# sharded forms the 4-device tests cover): the I3D without non-local blocks, one block a stage,
# whose train step each of the two processes compiles in about half the time of the tiny
# paper-structured network's (15-16 s against 29 s on a 2-core CPU).
SHORT = {
  "optim.total_epochs": 2,
  "optim.decay_start_epoch": 1,
  "optim.base_lr": 3e-4,
  "model.name": "resnet3d50",
  "model.stage_depths": (1, 1, 1, 1),
}
# The processes get their devices from their flags, and compile for themselves: JAX writes the
# persistent compilation cache from process 0 only, so with the cache process 0 would wait at the
# first collective while process 1 compiles, and Gloo gives up after 30 s on a loaded machine.
SUBPROCESS_UNSET = ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def subprocess_env(**extra) -> dict:
  """The launched processes' environment: this one without SLURM's variables and
  SUBPROCESS_UNSET, plus `extra`."""
  env = clean_env(**extra)
  for name in SUBPROCESS_UNSET:
    env.pop(name, None)
  return env


def slurm_job_id_with_free_port() -> int:
  """A job id whose coordinator port is free: JAX's SlurmCluster
  (jax/_src/clusters/slurm_cluster.py) puts it at 61440 + SLURM_JOB_ID % 4096."""
  first = random.randrange(1, 1 << 20)
  for job_id in range(first, first + 4096):
    with socket.socket() as s:
      try:
        s.bind(("", 61440 + job_id % 4096))
      except OSError:
        continue
    return job_id
  raise RuntimeError("no free port in 61440-65535 for the SLURM coordinator")


def run_in_own_session(args, env, timeout) -> subprocess.CompletedProcess:
  """subprocess.run that, on timeout, also kills the processes `args` started."""
  with subprocess.Popen(
    args,
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  ) as proc:
    try:
      out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      out, err = proc.communicate()
      raise AssertionError(f"{args[:2]} timed out after {timeout}s:\n{out}{err}") from None
  return subprocess.CompletedProcess(args, proc.returncode, out, err)


def launch_two_local_processes(workdir, flags) -> subprocess.CompletedProcess:
  """`launch.sh local 2` (2 CPU devices each) with the synthetic config and `flags`."""
  return subprocess.run(
    ["./launch.sh", "local", "2", "--config=configs/synthetic.py", f"--workdir={workdir}", *flags],
    cwd=REPO,
    env=subprocess_env(PORT=str(free_port()), CPU_DEVICES_PER_PROCESS="2"),
    capture_output=True,
    text=True,
    timeout=600,
  )


def train_losses(workdir) -> dict[int, float]:
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {d["step"]: d["train/loss"] for d in lines if "train/loss" in d}


def final_eval(workdir) -> dict:
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [d for d in lines if "eval/rank1" in d][-1]


def test_two_processes_match_one_and_their_checkpoint_restores(data_dir, tmp_path):
  two = tmp_path / "two_processes"
  result = launch_two_local_processes(two, tiny_flags(data_dir, **SHORT))
  other = (two / "process_1.log").read_text() if (two / "process_1.log").exists() else ""
  assert result.returncode == 0, result.stdout + result.stderr + other
  assert "4 devices (cpu) over 2 processes" in result.stderr, result.stderr

  one = tmp_path / "one_process"  # this pytest process has 4 CPU devices (conftest)
  train.train_and_evaluate(tiny_config(data_dir, **SHORT), str(one))

  losses_two, losses_one = train_losses(two), train_losses(one)
  assert sorted(losses_two) == [1, 2, 3, 4]
  assert losses_two.keys() == losses_one.keys()
  for step in losses_one:
    np.testing.assert_allclose(
      losses_two[step], losses_one[step], rtol=1e-5, err_msg=f"step {step}"
    )

  # The checkpoint written by the 2-process run is restored by a 1-process eval.
  restored = runner.run_eval(tiny_config(data_dir, mode="eval", **SHORT), str(two))
  assert restored["step"] == 4
  written = final_eval(two)
  np.testing.assert_allclose(restored["mAP"], written["eval/mAP"], rtol=1e-5)
  np.testing.assert_allclose(restored["rank1"], written["eval/rank1"], rtol=1e-5)

  # The same checkpoint evaluated by `launch.sh slurm` under an emulated srun (2 tasks on this
  # node, 2 CPU devices each): JAX finds the 2 processes from the SLURM environment alone.
  (two / "metrics.json").unlink()
  bin_dir = tmp_path / "slurm_bin"
  write_fake_srun(bin_dir)
  env = subprocess_env(
    PATH=f"{bin_dir}:{os.environ['PATH']}",
    JAX_PLATFORMS="cpu",
    SLURM_JOB_ID=str(slurm_job_id_with_free_port()),
    SLURM_NTASKS="2",
    SLURM_NNODES="1",
    SLURM_JOB_NODELIST="localhost",
  )
  result = run_in_own_session(
    [
      "./launch.sh",
      "slurm",
      "--cpu_devices=2",
      "--config=configs/synthetic.py",
      f"--workdir={two}",
      *tiny_flags(data_dir, mode="eval", **SHORT),
    ],
    env,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert "4 devices (cpu) over 2 processes" in result.stderr, result.stderr
  evaluated = json.loads((two / "metrics.json").read_text())
  assert evaluated["step"] == 4
  np.testing.assert_allclose(evaluated["mAP"], written["eval/mAP"], rtol=1e-5)
  np.testing.assert_allclose(evaluated["rank1"], written["eval/rank1"], rtol=1e-5)

  # `embed` over 2 processes: 3 tracklet folders shared out by chunks (process 0 gets a, 3
  # chunks of 4 frames; process 1 gets b and c, 11 chunks, 2 batches of 8), so process 0 runs a
  # padding batch; every tracklet's feature equals the 1-process run's.
  from PIL import Image

  from reid_jax.footage import embed as embed_lib

  rng = np.random.default_rng(0)
  for tracklet, length in (("a", 9), ("b", 3), ("c", 40)):
    folder = tmp_path / "footage" / tracklet
    folder.mkdir(parents=True)
    for frame in range(length):
      image = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
      Image.fromarray(image).save(folder / f"{frame}.png")
  flags = {"embed.input": str(tmp_path / "footage"), "embed.output": str(tmp_path / "two.npz")}
  result = launch_two_local_processes(two, tiny_flags(data_dir, mode="embed", **SHORT, **flags))
  assert result.returncode == 0, result.stdout + result.stderr
  flags["embed.output"] = str(tmp_path / "one.npz")
  one_process = embed_lib.run(tiny_config(data_dir, mode="embed", **SHORT, **flags), str(two))
  two_processes = embed_lib.load_embeddings(str(tmp_path / "two.npz"))
  one_process = embed_lib.load_embeddings(one_process)
  assert two_processes["names"].tolist() == ["a", "b", "c"]
  np.testing.assert_array_equal(two_processes["num_frames"], [9, 3, 40])
  np.testing.assert_allclose(two_processes["features"], one_process["features"], atol=1e-5)
