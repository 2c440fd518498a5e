#!/usr/bin/env bash
# Run the trainer in the image (see Dockerfile), with the GPUs, shared memory and mounts it needs.
#
#   launch/docker_run.sh [--image IMAGE] [--data DIR] [--runs DIR] [--nproc N] [--cpu] \
#       [--dry-run] CONFIG.yaml [section.key=value ...]
#
# CONFIG.yaml is a file on this machine (mounted read-only at /config); --data DIR is mounted
# read-only at /data (point data.prefixes at /data/...), --runs DIR (default ./runs) at /runs,
# and the run goes to /runs/<config name>. The container runs as your user id, so run files
# stay yours. --cpu runs without GPUs. Inside, launch/torchrun.sh picks one process per GPU.
set -euo pipefail

usage() { sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

image=${CSMOE_IMAGE:-csmoe-megatron:0.1.0} data="" runs=$PWD/runs gpus=1 dry_run=0 launch=()
while [ $# -gt 0 ]; do
    case "$1" in
        --image) image=${2:?--image needs a value}; shift 2 ;;
        --data) data=$(cd "${2:?--data needs a directory}" && pwd); shift 2 ;;
        --runs) runs=${2:?--runs needs a directory}; shift 2 ;;
        --nproc) launch+=(--nproc "${2:?--nproc needs a number}"); shift 2 ;;
        --cpu) gpus=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "docker_run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ] || [ ! -f "$1" ]; then echo "docker_run.sh: a config file is required" >&2; usage >&2; exit 2; fi
config_dir=$(cd "$(dirname "$1")" && pwd)
config_name=$(basename "$1")
shift
runs=$(realpath -m "$runs")

cmd=(docker run --rm --init
     # --ipc=host: the workers share tensors through /dev/shm, which docker caps at 64 MB;
     # where host IPC is not allowed use --shm-size=16g instead.
     --ipc=host --ulimit memlock=-1 --ulimit stack=67108864
     --user "$(id -u):$(id -g)" --env HOME=/tmp
     --volume "$config_dir:/config:ro" --volume "$runs:/runs")
if [ "$gpus" -eq 1 ]; then cmd+=(--gpus all); fi
if [ -n "$data" ]; then cmd+=(--volume "$data:/data:ro"); fi
if [ -t 0 ]; then cmd+=(--interactive --tty); fi
cmd+=("$image" launch/torchrun.sh "${launch[@]}" --run-dir "/runs/${config_name%.*}" "/config/$config_name" "$@")

if [ "$dry_run" -eq 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
mkdir -p "$runs"  # created by docker it would belong to root
exec "${cmd[@]}"
