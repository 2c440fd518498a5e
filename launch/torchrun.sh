#!/usr/bin/env bash
# Single-node launch of the trainer with torchrun.
#
#   launch/torchrun.sh [--nproc N] [--run-dir DIR] [--dry-run] CONFIG.yaml [section.key=value ...]
#
# Processes N: --nproc N when given; otherwise one per visible GPU, or 2 without GPUs. The
# backend follows the hardware (parallel.backend=auto: NCCL with GPUs, gloo without). --run-dir
# sets run.dir. Before any worker starts, the config and its inputs are checked once for N
# ranks (`csmoe-train --check`, which prints the plan); a refused config exits 2 and touches
# nothing. --dry-run prints the torchrun command only (no check, nothing started).
# SIGUSR1 or SIGTERM to this script or to its workers: the workers finish the step, save a
# checkpoint and exit 0; running the same command again resumes from it.
# Environment: CSMOE_TORCHRUN (default: torchrun on PATH, else the checkout's .venv/bin/torchrun),
# CSMOE_PYTHON (the Python of the check; default: the one beside torchrun),
# OMP_NUM_THREADS (default: cores / N).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/hardware.sh
source "$here/lib/hardware.sh"
# shellcheck source=lib/signals.sh
source "$here/lib/signals.sh"

usage() { sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

procs="" run_dir="" dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --nproc) procs=${2:?--nproc needs a number}; shift 2 ;;
        --nproc=*) procs=${1#*=}; shift ;;
        --run-dir) run_dir=${2:?--run-dir needs a directory}; shift 2 ;;
        --run-dir=*) run_dir=${1#*=}; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "torchrun.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ]; then usage >&2; exit 2; fi
config=$1
shift
if [ ! -f "$config" ]; then echo "torchrun.sh: config file not found: $config" >&2; exit 2; fi
procs=${procs:-$(csmoe_default_nproc)}
if ! [[ "$procs" =~ ^[1-9][0-9]*$ ]]; then
    echo "torchrun.sh: --nproc must be a positive integer, got '$procs'" >&2; exit 2
fi

root=$(dirname "$here")
csmoe_find_torchrun "$root" || exit 127
csmoe_thread_env "$procs"
csmoe_python_path "$root"
overrides=("$@")
if [ -n "$run_dir" ]; then overrides+=("run.dir=$run_dir"); fi
args=(--standalone --nproc-per-node "$procs" -m csmoe_megatron.train --config "$config" "${overrides[@]}")

echo "torchrun.sh: $CSMOE_TORCHRUN ${args[*]} (OMP_NUM_THREADS=$OMP_NUM_THREADS)" >&2
if [ "$dry_run" -eq 1 ]; then exit 0; fi
# The check runs in torchrun's environment: CSMOE_PYTHON, else the python beside torchrun.
read -ra launcher <<<"$CSMOE_TORCHRUN"
python=${CSMOE_PYTHON:-}
if [ -z "$python" ]; then
    case "${launcher[0]}" in
        *python*) python=${launcher[0]} ;;
        *) python=$(dirname "$(command -v "${launcher[0]}" || echo "${launcher[0]}")")/python
           if [ ! -x "$python" ]; then python=python3; fi ;;
    esac
fi
if ! "$python" -m csmoe_megatron.train --check --nproc "$procs" --config "$config" "${overrides[@]}" >&2; then
    echo "torchrun.sh: refused before starting any worker (nothing was written)" >&2
    exit 2
fi
# The workers validate again, quietly (the notes were printed by the check).
export CSMOE_VALIDATED=1
rc=0
csmoe_run_torchrun "${args[@]}" || rc=$?
exit "$rc"
