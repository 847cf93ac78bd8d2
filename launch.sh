#!/usr/bin/env bash
# Starts `python -m reid_jax.main` on every process of a multi-process run.
#
#   ./launch.sh local N <main flags>    N processes on this machine, over CPU devices (testing):
#                                       process i runs with --coordinator_address=127.0.0.1:PORT
#                                       --num_processes=N --process_id=i; each gets
#                                       CPU_DEVICES_PER_PROCESS CPU devices (default 1).
#   ./launch.sh slurm <main flags>      inside an allocation (sbatch/salloc): one process per task
#                                       via `srun --kill-on-bad-exit=1`. JAX reads the SLURM
#                                       environment (--distributed): SLURM_NTASKS processes, the
#                                       coordinator on the first node of SLURM_STEP_NODELIST at
#                                       port 61440 + SLURM_JOB_ID % 4096 (JAX_COORDINATOR_PORT
#                                       overrides), and on GPUs task i of a node sees only the
#                                       node's GPU i (SLURM_LOCALID): one task per GPU
#                                       (JAX_LOCAL_DEVICE_IDS=0,1,... overrides).
#   ./launch.sh tpu <main flags>        on one worker of a Cloud TPU VM pod slice; run it on every
#                                       worker (tpu-pod does). JAX finds the other workers itself.
#   ./launch.sh tpu-pod <main flags>    from a workstation: runs `cd REMOTE_DIR && ./launch.sh tpu
#                                       <main flags>` on every worker of the pod slice TPU_NAME in
#                                       TPU_ZONE (TPU_PROJECT if set) through
#                                       `gcloud compute tpus tpu-vm ssh --worker=all`; the flags
#                                       are quoted for the workers' shell.
#
# Examples: ./launch.sh local 2 --config=configs/synthetic.py --workdir=/tmp/demo2
#           TPU_NAME=my-pod TPU_ZONE=us-central2-b ./launch.sh tpu-pod --config=configs/mars.py \
#             --workdir=gs://bucket/mars
# Environment: PYTHON (default .venv/bin/python if present, else python3), PORT (local, default
# 12355), CPU_DEVICES_PER_PROCESS (local), TPU_NAME, TPU_ZONE, TPU_PROJECT and REMOTE_DIR
# (tpu-pod; REMOTE_DIR defaults to this checkout's path here). Logging, checkpoint metadata and
# pictures come from process 0; every process reads its own share of each batch. In local mode
# the other processes' output goes to <workdir>/process_<i>.log, and the script exits non-zero if
# any process fails.
# Tested: local mode for real; slurm mode with srun emulated on this machine (2 tasks on one node,
# with the task environment srun sets), not on a SLURM cluster; tpu-pod's gcloud command is
# checked, not run on a pod.
set -euo pipefail
cd "$(dirname "$0")"
header() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
usage() { header >&2; exit 2; }
[[ $# -ge 1 ]] || usage
mode=$1; shift
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# One word for a POSIX shell: single-quoted, each ' written as '\''.
shell_quote() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

case "$mode" in
  local)
    [[ $# -ge 1 && "$1" =~ ^[0-9]+$ && "$1" -ge 1 ]] || {
      echo "launch.sh: local mode needs a process count: ./launch.sh local N <main flags>" >&2
      usage
    }
    n=$1; shift
    port=${PORT:-12355}
    devices=${CPU_DEVICES_PER_PROCESS:-1}
    workdir=$(printf '%s\n' "$@" | sed -n 's/^--workdir=//p' | tail -n 1)
    logdir=${workdir:-.}
    mkdir -p "$logdir"
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
    for ((i = 1; i < n; i++)); do
      JAX_PLATFORMS=cpu "$PYTHON" -m reid_jax.main --coordinator_address="127.0.0.1:$port" \
        --num_processes="$n" --process_id="$i" --cpu_devices="$devices" "$@" \
        >"$logdir/process_$i.log" 2>&1 &
      pids+=($!)
    done
    status=0
    JAX_PLATFORMS=cpu "$PYTHON" -m reid_jax.main --coordinator_address="127.0.0.1:$port" \
      --num_processes="$n" --process_id=0 --cpu_devices="$devices" "$@" || status=$?
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    exit "$status"
    ;;
  slurm)
    command -v srun >/dev/null 2>&1 || {
      echo "launch.sh: slurm mode needs srun, which is not on PATH: run it inside a SLURM" \
        "allocation (sbatch or salloc) on a node with the SLURM client commands" >&2
      exit 1
    }
    exec srun --kill-on-bad-exit=1 "$PYTHON" -m reid_jax.main --distributed "$@"
    ;;
  tpu)
    exec "$PYTHON" -m reid_jax.main --distributed "$@"
    ;;
  tpu-pod)
    for var in TPU_NAME TPU_ZONE; do
      [[ -n "${!var:-}" ]] || {
        echo "launch.sh: tpu-pod mode needs $var (the pod slice's name and zone), e.g." \
          "TPU_NAME=my-pod TPU_ZONE=us-central2-b ./launch.sh tpu-pod <main flags>" >&2
        exit 2
      }
    done
    command -v gcloud >/dev/null 2>&1 || {
      echo "launch.sh: tpu-pod mode needs gcloud (the Google Cloud CLI), which is not on PATH" >&2
      exit 1
    }
    remote="cd $(shell_quote "${REMOTE_DIR:-$PWD}") && ./launch.sh tpu"
    for arg in "$@"; do remote+=" $(shell_quote "$arg")"; done
    project=()
    if [[ -n "${TPU_PROJECT:-}" ]]; then project=(--project="$TPU_PROJECT"); fi
    exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$TPU_ZONE" ${project[@]+"${project[@]}"} \
      --worker=all --command="$remote"
    ;;
  -h|--help|help)
    header
    ;;
  *)
    echo "launch.sh: unknown mode '$mode' (local, slurm, tpu or tpu-pod)" >&2
    usage
    ;;
esac
