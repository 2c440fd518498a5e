#!/usr/bin/env bash
# Submit train.sbatch with the common #SBATCH settings as options.
#
#   launch/slurm/submit.sh [--nodes N] [--gpus-per-node G] [--gres SPEC] [--cpus-per-task N]
#       [--exclusive] [--time HH:MM:SS] [--partition P] [--account A] [--job-name NAME]
#       [--image IMAGE] [--runtime pyxis|apptainer] [--warn-seconds S] [--dry-run]
#       [--] CONFIG.yaml [section.key=value ...]
#
# GPUs are requested only by --gpus-per-node G (sbatch --gpus-per-node=G) or --gres SPEC
# (sbatch --gres=SPEC, e.g. gpu:8 or gpu:h100:8); with neither the job asks for none (CPU).
# --cpus-per-task: CPUs of the one task per node (train.sbatch: 32); --exclusive: whole nodes.
# --image runs every node inside a container (pyxis/enroot by default, or apptainer).
# --warn-seconds: how long before the time limit SLURM sends SIGUSR1 (save and requeue);
#   it must be shorter than --time.
# --job-name: the job's name (default csmoe; the log is NAME-JOBID.out).
# --dry-run prints the sbatch command instead of running it (no check).
# Before sbatch, the config and its inputs are checked for the job's ranks (nodes x processes
# per node: CSMOE_NPROC_PER_NODE, else --gpus-per-node or the --gres GPU count, else 2), so a
# bad config is refused in seconds, not after the queue (exit 2, nothing submitted). With
# --image the data paths are the container's: only the config is checked. The check runs with
# CSMOE_PYTHON, else the checkout's .venv/bin/python, else python3; without csmoe_megatron
# there it is skipped, with a note.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
usage() { sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

positive() {  # NAME VALUE: VALUE must be a positive integer
    if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
        echo "submit.sh: $1 must be a positive integer, got '$2'" >&2; exit 2
    fi
}

# seconds_of T: SLURM's time spec (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds; empty for
# anything else (e.g. UNLIMITED).
seconds_of() {
    local d=0 h=0 m=0 s=0 t=$1 parts
    if [[ "$t" =~ ^([0-9]+)-([0-9:]+)$ ]]; then
        d=${BASH_REMATCH[1]}
        IFS=: read -r h m s <<<"${BASH_REMATCH[2]}"
    elif [[ "$t" =~ ^[0-9:]+$ ]]; then
        IFS=: read -ra parts <<<"$t"
        case ${#parts[@]} in
            1) m=${parts[0]} ;;
            2) m=${parts[0]} s=${parts[1]} ;;
            3) h=${parts[0]} m=${parts[1]} s=${parts[2]} ;;
            *) return 0 ;;
        esac
    else
        return 0
    fi
    echo $(( ((10#$d * 24 + 10#${h:-0}) * 60 + 10#${m:-0}) * 60 + 10#${s:-0} ))
}

opts=() exports="ALL,CSMOE_ROOT=$root" dry_run=0 warn=300 time_limit="" nodes=1 per_node="" image=0
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes | --gpus-per-node | --time | --partition | --account | --job-name | --gres)
            case "$1" in
                --nodes) nodes=${2:?$1 needs a value} ;;
                --gpus-per-node) per_node=${2:?$1 needs a value} ;;
                --gres) per_node=$(sed -nE 's/(^|.*,)gpu(:[^:,]+)?:([0-9]+).*/\3/p' <<<"${2:?}") ;;
                --time) time_limit=${2:?$1 needs a value} ;;
            esac
            opts+=("$1=${2:?$1 needs a value}"); shift 2 ;;
        --cpus-per-task)
            positive "$1" "${2:?$1 needs a value}"; opts+=("$1=$2"); shift 2 ;;
        --exclusive) opts+=(--exclusive); shift ;;
        --image) exports+=",CSMOE_CONTAINER_IMAGE=${2:?--image needs a value}"; image=1; shift 2 ;;
        --runtime) exports+=",CSMOE_CONTAINER_RUNTIME=${2:?--runtime needs a value}"; shift 2 ;;
        --warn-seconds) positive "$1" "${2:?$1 needs a value}"; warn=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "submit.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ]; then usage >&2; exit 2; fi
if [ ! -f "$1" ]; then echo "submit.sh: config file not found: $1" >&2; exit 2; fi
limit_s=$(seconds_of "${time_limit:-04:00:00}")
if [ -n "$limit_s" ] && [ "$limit_s" -le "$warn" ]; then
    echo "submit.sh: the time limit (${time_limit:-04:00:00}, ${limit_s}s) must be longer than" \
         "--warn-seconds ($warn): SLURM would send the save-and-requeue signal at once;" \
         "pass a longer --time or a smaller --warn-seconds" >&2
    exit 2
fi

cmd=(sbatch "${opts[@]}" --signal="B:USR1@$warn" --export="$exports"
     "$root/launch/slurm/train.sbatch" "$@")
if [ "$dry_run" -eq 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi

# The check, for the ranks node.sh will start: nodes x CSMOE_NPROC_PER_NODE, else the GPUs
# asked for, else 2 (node.sh's default without GPUs).
per_node=${CSMOE_NPROC_PER_NODE:-${per_node:-2}}
positive "the number of nodes" "$nodes"
positive "the processes per node" "$per_node"
python=${CSMOE_PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
check=(--check --nproc "$((nodes * per_node))" --config "$@")
if [ "$image" -eq 1 ]; then check=(--skip-inputs "${check[@]}"); fi
if ! PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -c "import csmoe_megatron" 2>/dev/null; then
    echo "submit.sh: note: not checking the config ($python cannot import csmoe_megatron;" \
         "set CSMOE_PYTHON)" >&2
elif ! PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m csmoe_megatron.train "${check[@]}" >&2; then
    echo "submit.sh: refused before sbatch (nothing submitted)" >&2
    exit 2
fi
exec "${cmd[@]}"
