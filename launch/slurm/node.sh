#!/usr/bin/env bash
# One node of a SLURM job: srun (train.sbatch) runs this once per node. Starts torchrun for
# this node's processes; all nodes meet at the c10d rendezvous hosted by the first node.
#   node.sh CONFIG [section.key=value ...]   (env from train.sbatch: CSMOE_RDZV_ENDPOINT/ID)
# SIGUSR1/SIGTERM from srun: the workers finish the step, save and exit 0 (lib/signals.sh).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/hardware.sh
source "$here/../lib/hardware.sh"
# shellcheck source=../lib/signals.sh
source "$here/../lib/signals.sh"

: "${CSMOE_RDZV_ENDPOINT:?set by train.sbatch}" "${CSMOE_RDZV_ID:?set by train.sbatch}"
config=${1:?usage: node.sh CONFIG [overrides]}
shift
node=${SLURM_NODEID:-${SLURM_PROCID:?not started by srun}}
procs=${CSMOE_NPROC_PER_NODE:-$(csmoe_default_nproc)}
csmoe_thread_env "$procs"
csmoe_python_path "$(dirname "$(dirname "$here")")"
# The first node hosts the rendezvous store; the others connect to it.
is_host=0
if [ "$node" -eq 0 ]; then is_host=1; fi

args=(--nnodes "$SLURM_NNODES" --nproc-per-node "$procs" --max-restarts 0
      --rdzv-backend c10d --rdzv-endpoint "$CSMOE_RDZV_ENDPOINT" --rdzv-id "$CSMOE_RDZV_ID"
      --rdzv-conf "is_host=$is_host" -m csmoe_megatron.train --config "$config" "$@")
echo "node.sh[$node@$(hostname)]: ${CSMOE_TORCHRUN:-torchrun} ${args[*]}" >&2
rc=0
csmoe_run_torchrun "${args[@]}" || rc=$?
exit "$rc"
