#!/usr/bin/env bash
# A two-node SLURM cluster on this machine, to try a job script before queueing it for real:
# munged, slurmctld and two slurmd (nodes n1 and n2, both at 127.0.0.1), all state in one
# temporary directory. Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)
# and root (slurmd starts job steps as the submitting user).
#
#   launch/slurm/local_cluster.sh [--dir DIR] start|stop|status
#   eval "$(launch/slurm/local_cluster.sh env)"   # SLURM_CONF for sbatch/squeue/scancel
#
# DIR: $CSMOE_SLURM_DIR, else ${TMPDIR:-/tmp}/csmoe-slurm. Ports: slurmctld on
# $CSMOE_SLURM_PORT (17000), n1 and n2 on the next two. Each node claims $CSMOE_SLURM_CPUS (32,
# train.sbatch's default --cpus-per-task) CPUs, so job scripts run unchanged; both share this
# machine's cores. `start` adds "127.0.0.1 n1 n2" to /etc/hosts when n1/n2 do not resolve
# (the job script rendezvouses at its first node by name) and says so; `stop` leaves it.
set -euo pipefail

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
dir=${CSMOE_SLURM_DIR:-${TMPDIR:-/tmp}/csmoe-slurm}
if [ "${1:-}" = --dir ]; then dir=${2:?--dir needs a value}; shift 2; fi
action=${1:-}
port=${CSMOE_SLURM_PORT:-17000}
cpus=${CSMOE_SLURM_CPUS:-32}
conf=$dir/slurm.conf
nodes=(n1 n2)

die() { echo "local_cluster.sh: $*" >&2; exit 1; }

need_tools() {
    local t
    for t in munged slurmctld slurmd sinfo; do
        command -v "$t" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
        command -v "$t" >/dev/null 2>&1 \
            || die "$t not found: install SLURM and munge (apt-get install slurm-wlm munge)"
    done
}

ensure_hosts() {  # the node names must resolve, to this machine
    local n addr missing=()
    for n in "${nodes[@]}"; do
        addr=$(getent hosts "$n" | awk '{print $1; exit}' || true)
        if [ -z "$addr" ]; then missing+=("$n")
        elif [ "$addr" != 127.0.0.1 ]; then
            die "host $n resolves to $addr, not 127.0.0.1 (/etc/hosts)"
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ -w /etc/hosts ] || die "add '127.0.0.1 ${missing[*]}' to /etc/hosts (needs root)"
        echo "127.0.0.1 ${missing[*]}  # csmoe local SLURM cluster" >>/etc/hosts
        echo "local_cluster.sh: added '127.0.0.1 ${missing[*]}' to /etc/hosts" >&2
    fi
}

write_conf() {
    local i
    cat >"$conf" <<EOF
ClusterName=csmoe-local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$port
SlurmUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdSpoolDir=$dir/spool-%n
SlurmdLogFile=$dir/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
EOF
    for i in "${!nodes[@]}"; do
        echo "NodeName=${nodes[$i]} NodeAddr=127.0.0.1 NodeHostname=$(hostname -s)" \
             "Port=$((port + 1 + i)) CPUs=$cpus State=UNKNOWN" >>"$conf"
    done
    echo "PartitionName=local Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE" \
         "State=UP" >>"$conf"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    need_tools
    if running "$dir/slurmctld.pid"; then die "already running in $dir (stop it first)"; fi
    ensure_hosts
    mkdir -p "$dir/state"
    chmod 700 "$dir"
    if [ ! -f "$dir/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
        chmod 400 "$dir/munge.key"
    fi
    munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"
    write_conf
    export SLURM_CONF=$conf
    slurmctld -i
    local n
    for n in "${nodes[@]}"; do mkdir -p "$dir/spool-$n"; slurmd -N "$n"; done
    for _ in $(seq 150); do  # nodes register within seconds
        if [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -c '^idle')" -eq ${#nodes[@]} ]; then
            echo "local_cluster.sh: nodes ${nodes[*]} up; export SLURM_CONF=$conf" >&2
            return 0
        fi
        sleep 0.2
    done
    sinfo -N >&2 || true
    die "nodes did not come up within 30 s; logs in $dir"
}

stop() {
    local f pid
    if [ -S "$dir/munge.socket" ] && [ -f "$conf" ]; then  # end jobs before their daemons
        export SLURM_CONF=$conf
        scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 100); do  # KillWait (10 s) at most
            [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for f in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munged.pid"; do
        running "$f" || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    echo "local_cluster.sh: stopped (state left in $dir)" >&2
}

status() {
    local f ok=0
    for f in "$dir/munged.pid" "$dir/slurmctld.pid" "${nodes[@]/#/$dir/slurmd-}"; do
        f=${f%.pid}.pid
        if running "$f"; then echo "$(basename "$f" .pid): running"
        else echo "$(basename "$f" .pid): stopped"; ok=1
        fi
    done
    if [ "$ok" -eq 0 ]; then SLURM_CONF=$conf sinfo -N; fi
    return "$ok"
}

case "$action" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$conf" ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac
