#!/usr/bin/env bash
# One node of a SLURM job: srun (train.sbatch) runs this once per node. Starts torchrun for
# this node's processes; all nodes meet at the static rendezvous hosted by the first node.
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
root=$(dirname "$(dirname "$here")")
csmoe_python_path "$root"
csmoe_find_torchrun "$root" || exit 127
# Static rendezvous: node 0's torchrun hosts the store and the others connect to it. Not c10d:
# its agents close the rendezvous in that store after the exit barrier, racing node 0's exit,
# and the loser's TCPStore client dumps a C++ stack ("recvVector failed", frame #...) into the
# log. The job is fixed-size with no restarts, so the elastic rendezvous buys nothing here.
args=(--nnodes "$SLURM_NNODES" --node-rank "$node" --nproc-per-node "$procs" --max-restarts 0
      --rdzv-backend static --rdzv-endpoint "$CSMOE_RDZV_ENDPOINT" --rdzv-id "$CSMOE_RDZV_ID"
      -m csmoe_megatron.train --config "$config" "$@")
where="node.sh[$node@${SLURMD_NODENAME:-$(hostname)}]"
echo "$where: ${CSMOE_TORCHRUN:-torchrun} ${args[*]}" >&2
rc=0
csmoe_run_torchrun "${args[@]}" || rc=$?
if [ "$rc" -ne 0 ]; then echo "$where: torchrun exited with $rc" >&2; fi
exit "$rc"
