"""launch.sh without JAX work: its usage errors, and the commands it hands to srun and gcloud.

`srun` and `gcloud` are fakes written here; `write_fake_srun` is also used by
test_multiprocess.py, which runs a real 2-process evaluation through the emulated srun."""

import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch.sh")

# Emulates SLURM's `srun` inside a one-node allocation: starts SLURM_NTASKS (or --ntasks / -n)
# copies of the command, each with the task environment srun gives it, forwards their output,
# honours --kill-on-bad-exit, waits for all and exits non-zero if any task failed.
FAKE_SRUN = r"""
import os
import signal
import subprocess
import sys
import time

args = sys.argv[1:]
if "SLURM_JOB_ID" not in os.environ:
  sys.exit("srun: error: no job allocation (SLURM_JOB_ID is not set)")
ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
kill_on_bad_exit = False
while args and args[0].startswith("-"):
  option = args.pop(0)
  if option in ("-K", "-K1", "--kill-on-bad-exit", "--kill-on-bad-exit=1"):
    kill_on_bad_exit = True
  elif option in ("-K0", "--kill-on-bad-exit=0"):
    kill_on_bad_exit = False
  elif option.startswith("--ntasks="):
    ntasks = int(option.split("=", 1)[1])
  elif option == "-n":
    ntasks = int(args.pop(0))
  else:
    sys.exit(f"srun (emulated): unsupported option {option}")
if not args:
  sys.exit("srun: fatal: No command given to execute.")

node = os.environ.get("SLURM_JOB_NODELIST", "localhost")
step = {"SLURM_JOBID": os.environ["SLURM_JOB_ID"], "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
        "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
        "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_NNODES": "1", "SLURM_STEP_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": node, "SLURM_NODELIST": node, "SLURM_STEP_NODELIST": node,
        "SLURMD_NODENAME": node, "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": str(ntasks),
        "SLURM_STEP_TASKS_PER_NODE": str(ntasks)}
tasks = []
for rank in range(ntasks):
  env = {**os.environ, **step, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
  stdin = None if rank == 0 else subprocess.DEVNULL  # srun gives stdin to task 0 only
  tasks.append(subprocess.Popen(args, env=env, stdin=stdin))


def stop():
  for task in tasks:
    if task.poll() is None:
      task.terminate()


def on_signal(number, frame):
  stop()
  sys.exit(128 + number)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
while any(task.poll() is None for task in tasks):
  failed = [rank for rank, task in enumerate(tasks) if task.poll() not in (None, 0)]
  if failed and kill_on_bad_exit:
    print(f"srun: error: task {failed[0]} exited with {tasks[failed[0]].returncode}: "
          "terminating the other tasks (--kill-on-bad-exit)", file=sys.stderr, flush=True)
    stop()
    break
  time.sleep(0.1)
deadline = time.time() + 10
for task in tasks:
  try:
    task.wait(max(0.1, deadline - time.time()))
  except subprocess.TimeoutExpired:
    task.kill()
    task.wait()
codes = [task.returncode if task.returncode >= 0 else 128 - task.returncode for task in tasks]
sys.exit(max(codes))
"""

# Stands in for python on the remote side: prints its arguments, directory and SLURM task id.
FAKE_PYTHON = r"""
import json, os, sys
line = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                   "procid": os.environ.get("SLURM_PROCID")}) + "\n"
os.write(1, line.encode())  # one write: the tasks' lines do not interleave
"""

# Flags a shell would mangle if they were not quoted.
AWKWARD_FLAGS = [
  "--config=configs/mars.py",
  "--workdir=/tmp/it's a dir",
  '--config.note="x y"',
  "--config.a=$HOME `id` ;*",
  "--config.b=two\nlines",
  "--config.c=",
]


def write_script(path, body: str):
  """An executable Python script at `path` run by this interpreter."""
  path.write_text(f"#!{sys.executable}\n{body}")
  path.chmod(0o755)
  return path


def write_fake_srun(bin_dir):
  bin_dir.mkdir(parents=True, exist_ok=True)
  return write_script(bin_dir / "srun", FAKE_SRUN)


def clean_env(**extra) -> dict:
  """This environment without SLURM's variables (the tests may run inside an allocation)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(extra)
  return env


def bare_path(tmp_path) -> str:
  """A PATH with only the commands launch.sh needs before its own checks (no srun, no gcloud)."""
  bin_dir = tmp_path / "bare_bin"
  bin_dir.mkdir()
  for tool in ("env", "bash", "dirname", "awk"):
    (bin_dir / tool).symlink_to(shutil.which(tool))
  return str(bin_dir)


def launch(*args, env=None, timeout=60):
  return subprocess.run(
    [LAUNCH, *args], env=env or clean_env(), capture_output=True, text=True, timeout=timeout
  )


def test_usage_errors_exit_2():
  for args, message in [
    ((), "Starts `python -m reid_jax.main`"),
    (("bogus",), "unknown mode 'bogus'"),
    (("local",), "local mode needs a process count"),
    (("local", "--workdir=/tmp/x"), "local mode needs a process count"),
    (("local", "0"), "local mode needs a process count"),
  ]:
    result = launch(*args)
    assert result.returncode == 2, (args, result)
    assert message in result.stderr, (args, result.stderr)
    assert "./launch.sh tpu-pod <main flags>" in result.stderr, (args, result.stderr)
  result = launch("--help")
  assert result.returncode == 0 and "./launch.sh slurm <main flags>" in result.stdout, result


def test_slurm_mode_outside_an_allocation_names_srun(tmp_path):
  result = launch("slurm", "--workdir=/tmp/x", env=clean_env(PATH=bare_path(tmp_path)))
  assert result.returncode == 1, result
  assert "srun" in result.stderr and "not on PATH" in result.stderr, result.stderr


def test_slurm_mode_starts_one_process_per_task(tmp_path):
  write_fake_srun(tmp_path / "bin")
  python = write_script(tmp_path / "python", FAKE_PYTHON)
  env = clean_env(
    PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    PYTHON=str(python),
    SLURM_JOB_ID="4242",
    SLURM_NTASKS="3",
    SLURM_JOB_NODELIST="localhost",
  )
  result = launch("slurm", *AWKWARD_FLAGS, env=env)
  assert result.returncode == 0, result
  runs = [json.loads(line) for line in result.stdout.splitlines()]
  assert sorted(run["procid"] for run in runs) == ["0", "1", "2"]
  for run in runs:
    assert run["argv"] == ["-m", "reid_jax.main", "--distributed", *AWKWARD_FLAGS]
    assert run["cwd"] == REPO


def test_slurm_mode_stops_the_step_when_a_task_fails(tmp_path):
  write_fake_srun(tmp_path / "bin")
  # Task 1 fails at once; task 0 would run for a minute unless the step is killed.
  python = write_script(
    tmp_path / "python",
    ("import os, sys, time\nif os.environ['SLURM_PROCID'] == '1': sys.exit(3)\ntime.sleep(60)\n"),
  )
  env = clean_env(
    PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
    PYTHON=str(python),
    SLURM_JOB_ID="4242",
    SLURM_NTASKS="2",
  )
  result = launch("slurm", "--workdir=/tmp/x", env=env, timeout=30)
  assert result.returncode != 0, result
  assert "task 1 exited with 3" in result.stderr, result.stderr


def tpu_pod(tmp_path, *flags, **env_vars):
  """Runs `./launch.sh tpu-pod flags` with a fake gcloud; returns its exit status, stderr and
  the gcloud argv it recorded (None if gcloud was not called)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  record = tmp_path / "gcloud_argv.json"
  write_script(
    bin_dir / "gcloud",
    (f"import json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"),
  )
  result = launch(
    "tpu-pod", *flags, env=clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", **env_vars)
  )
  argv = json.loads(record.read_text()) if record.exists() else None
  return result, argv


def run_remote_command(command: str, python) -> dict:
  """What a worker does with gcloud's --command: its shell runs it, with PYTHON faked."""
  result = subprocess.run(
    ["bash", "-c", command],
    env=clean_env(PYTHON=str(python)),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode == 0, result
  return json.loads(result.stdout)


def test_tpu_pod_runs_tpu_mode_on_every_worker_with_flags_intact(tmp_path):
  python = write_script(tmp_path / "python", FAKE_PYTHON)
  result, argv = tpu_pod(tmp_path, *AWKWARD_FLAGS, TPU_NAME="my-pod", TPU_ZONE="us-central2-b")
  assert result.returncode == 0, result
  *head, command = argv
  assert head == [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "my-pod",
    "--zone=us-central2-b",
    "--worker=all",
  ]
  assert command.startswith("--command=cd ")
  run = run_remote_command(command.removeprefix("--command="), python)
  assert run["argv"] == ["-m", "reid_jax.main", "--distributed", *AWKWARD_FLAGS]
  assert run["cwd"] == REPO  # the workers' checkout defaults to this one's path


def test_tpu_pod_with_project_and_remote_dir(tmp_path):
  remote = tmp_path / "it's the remote dir"  # a worker's checkout, with only launch.sh in it
  remote.mkdir()
  shutil.copy(LAUNCH, remote / "launch.sh")
  python = write_script(tmp_path / "python", FAKE_PYTHON)
  result, argv = tpu_pod(
    tmp_path,
    "--workdir=gs://bucket/run 1",
    TPU_NAME="pod",
    TPU_ZONE="europe-west4-a",
    TPU_PROJECT="my-project",
    REMOTE_DIR=str(remote),
  )
  assert result.returncode == 0, result
  assert argv[4:7] == ["pod", "--zone=europe-west4-a", "--project=my-project"]
  run = run_remote_command(argv[-1].removeprefix("--command="), python)
  assert run["argv"] == ["-m", "reid_jax.main", "--distributed", "--workdir=gs://bucket/run 1"]
  assert run["cwd"] == str(remote)


def test_tpu_pod_needs_name_zone_and_gcloud(tmp_path):
  result, argv = tpu_pod(tmp_path, "--workdir=x", TPU_ZONE="us-central2-b")
  assert result.returncode == 2 and "needs TPU_NAME" in result.stderr and argv is None, result
  result, argv = tpu_pod(tmp_path, "--workdir=x", TPU_NAME="my-pod")
  assert result.returncode == 2 and "needs TPU_ZONE" in result.stderr and argv is None, result
  result = launch("tpu-pod", env=clean_env(PATH=bare_path(tmp_path), TPU_NAME="p", TPU_ZONE="z"))
  assert result.returncode == 1 and "gcloud" in result.stderr, result
