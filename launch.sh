#!/usr/bin/env bash
# Starts `python -m reid_jax.main` on every process of a multi-process run.
#
#   ./launch.sh local N <main flags>    N processes on this machine, over CPU devices (testing):
#                                       process i runs with --coordinator_address=127.0.0.1:PORT
#                                       --num_processes=N --process_id=i; each gets
#                                       CPU_DEVICES_PER_PROCESS CPU devices (default 1).
#   ./launch.sh slurm <main flags>      inside an allocation (sbatch/salloc): one process per task
#                                       via srun (--ntasks = nodes or GPUs); JAX reads the SLURM
#                                       environment (--distributed) to find the others.
#   ./launch.sh tpu <main flags>        on a Cloud TPU VM pod slice: run this on every worker, e.g.
#                                       gcloud compute tpus tpu-vm ssh NAME --worker=all
#                                       --command="cd reid_jax && ./launch.sh tpu <flags>";
#                                       JAX finds the other workers itself (--distributed).
#
# Example: ./launch.sh local 2 --config=configs/synthetic.py --workdir=/tmp/demo2
# Environment: PYTHON (default .venv/bin/python if present, else python3), PORT (local, default
# 12355), CPU_DEVICES_PER_PROCESS (local). Logging, checkpoint metadata and pictures come from
# process 0; every process reads its own share of each batch. In local mode the other processes'
# output goes to <workdir>/process_<i>.log, and the script exits non-zero if any process fails.
set -euo pipefail
cd "$(dirname "$0")"
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 1 ]] || usage
mode=$1; shift
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

case "$mode" in
  local)
    [[ $# -ge 1 && "$1" =~ ^[0-9]+$ && "$1" -ge 1 ]] || { echo "local mode needs a process count" >&2; usage; }
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
    exec srun --kill-on-bad-exit=1 "$PYTHON" -m reid_jax.main --distributed "$@"
    ;;
  tpu)
    exec "$PYTHON" -m reid_jax.main --distributed "$@"
    ;;
  *)
    usage
    ;;
esac
