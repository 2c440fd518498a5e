# shellcheck shell=bash
# Sourced by the launchers: run torchrun as a child and turn stop signals into save requests.
#
# SIGUSR1 (SLURM's warning before the time limit) or SIGTERM (cancel, preemption, docker stop)
# to the launcher: it hands the signal to torchrun's workers, which agree on it at the next
# step boundary, save a checkpoint and exit 0; torchrun keeps supervising them until they have.
# Why not `exec torchrun`, or let torchrun forward SIGTERM itself: torchrun does not handle
# SIGUSR1 (it would kill torchrun and never reach the workers), and on SIGTERM it tears the job
# down: it signals each worker's process group, waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT, kills
# them, and exits 1; a second SIGTERM meanwhile (a signal sent to the launcher's whole process
# group reaches torchrun directly and through the launcher) ends torchrun at once, taking the
# rendezvous store its workers were started with. So torchrun runs with both signals ignored
# and not in its TORCHELASTIC_SIGNALS_TO_HANDLE; the workers install their own handlers. A
# SIGTERM sent to the torchrun process alone is therefore ignored: signal the launcher, the
# workers, or all of them.

# csmoe_find_torchrun ROOT: set CSMOE_TORCHRUN to the user's choice, else torchrun on PATH,
# else the checkout's venv (a fresh clone after launch/setup_cpu.sh works without activating
# it); 1 with a message naming the fix when there is none.
csmoe_find_torchrun() {
    if [ -n "${CSMOE_TORCHRUN:-}" ]; then return 0; fi
    if command -v torchrun >/dev/null 2>&1; then CSMOE_TORCHRUN=torchrun
    elif [ -x "$1/.venv/bin/torchrun" ]; then CSMOE_TORCHRUN=$1/.venv/bin/torchrun
    else
        echo "torchrun not found: run launch/setup_cpu.sh (it makes .venv in $1)," \
             "activate your environment, or set CSMOE_TORCHRUN" >&2
        return 1
    fi
    export CSMOE_TORCHRUN
}

# csmoe_wait PID: the exit status of background PID, riding out trapped signals (a trapped
# signal makes `wait` return early with a status above 128 while PID still runs).
csmoe_wait() {
    local pid=$1 rc again
    while :; do
        rc=0
        wait "$pid" || rc=$?
        if [ "$rc" -le 128 ]; then return "$rc"; fi
        if kill -0 "$pid" 2>/dev/null; then continue; fi
        again=0  # it exited meanwhile: collect its own status (127: rc already was)
        wait "$pid" || again=$?
        if [ "$again" -eq 127 ]; then return "$rc"; fi
        return "$again"
    done
}

# csmoe_forward_stop SIGNAL PID: SIGNAL once to each worker of torchrun PID, as soon as the
# worker catches it. Until a worker installs its handler (early in its start-up) it ignores the
# signal, inherited from torchrun, so an early signal would be lost and the job would run into
# its time limit. Not blindly repeated: a worker exiting has restored the default action, and a
# repeat would kill it. Where /proc is missing: once, at once.
csmoe_forward_stop() {
    local sig=$1 pid=$2 sent=" " w mask bit
    if [ ! -r /proc/self/status ]; then pkill "-$sig" -P "$pid" || true; return 0; fi
    bit=$(( 1 << ($(kill -l "$sig") - 1) ))  # the signal's bit in /proc/PID/status SigCgt
    while kill -0 "$pid" 2>/dev/null; do
        for w in $(pgrep -P "$pid"); do
            case "$sent" in *" $w "*) continue ;; esac
            mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$w/status" 2>/dev/null) || continue
            if [ -n "$mask" ] && (( 0x$mask & bit )); then
                kill "-$sig" "$w" 2>/dev/null && sent+="$w "
            fi
        done
        sleep 1
    done
}

# csmoe_stop_workers SIGNAL PID: a save request to torchrun PID's workers (its children), once
# per launch whatever the number of signals (SLURM may send the same one twice).
csmoe_stop_workers() {
    echo "launcher: SIG$1, workers finish their step, save a checkpoint and exit" >&2
    if [ -z "$csmoe_forwarder" ]; then
        csmoe_forward_stop "$1" "$2" &
        csmoe_forwarder=$!
    fi
}

csmoe_run_torchrun() {
    local pid rc=0 torchrun
    csmoe_forwarder=
    read -ra torchrun <<<"${CSMOE_TORCHRUN:-torchrun}"  # e.g. "python -m torch.distributed.run"
    (
        trap '' USR1 TERM
        # torchrun's --signals-to-handle reads PET_SIGNALS_TO_HANDLE; older releases read the
        # second variable directly.
        export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
        export TORCHELASTIC_SIGNALS_TO_HANDLE=$PET_SIGNALS_TO_HANDLE
        exec "${torchrun[@]}" "$@"
    ) &
    pid=$!
    # shellcheck disable=SC2064  # expand $pid now
    trap "csmoe_stop_workers USR1 $pid" USR1
    # shellcheck disable=SC2064
    trap "csmoe_stop_workers TERM $pid" TERM
    # shellcheck disable=SC2064
    trap "kill -INT $pid 2>/dev/null" INT
    csmoe_wait "$pid" || rc=$?
    trap - USR1 TERM INT
    if [ -n "$csmoe_forwarder" ]; then kill "$csmoe_forwarder" 2>/dev/null || true; fi
    return "$rc"
}
