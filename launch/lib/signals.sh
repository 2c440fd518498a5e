# shellcheck shell=bash
# Sourced by the launchers: run torchrun as a child and pass preemption signals on.
#
# Why not `exec torchrun`: torchrun starts each worker in a session of its own and does not
# handle SIGUSR1 (SLURM's warning before the time limit), so SIGUSR1 would kill torchrun and
# never reach the workers. Here torchrun runs with SIGUSR1 ignored and SIGUSR1 goes straight
# to its workers, which save a checkpoint and exit 0. SIGTERM/SIGINT go to torchrun, which
# forwards them to the workers (they save too, within TORCH_ELASTIC_SHUTDOWN_TIMEOUT).

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

# csmoe_forward_usr1 PID: SIGUSR1 once to each worker of torchrun PID, as soon as the worker
# catches it. A worker installs its handler late (after building the model); until then it
# ignores SIGUSR1 (inherited from torchrun), so an early signal would be lost and the job would
# run into its time limit. Not blindly repeated: a worker exiting has restored the default
# action, and a repeat would kill it. Where /proc is missing: once, at once.
csmoe_forward_usr1() {
    local sent=" " w mask
    if [ ! -r /proc/self/status ]; then pkill -USR1 -P "$1" || true; return 0; fi
    while kill -0 "$1" 2>/dev/null; do
        for w in $(pgrep -P "$1"); do
            case "$sent" in *" $w "*) continue ;; esac
            mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$w/status" 2>/dev/null) || continue
            if [ -n "$mask" ] && (( 0x$mask & 0x200 )); then  # bit 9: SIGUSR1 (10) is caught
                kill -USR1 "$w" 2>/dev/null && sent+="$w "
            fi
        done
        sleep 1
    done
}

csmoe_run_torchrun() {
    local pid rc=0 torchrun usr1_fwd=
    read -ra torchrun <<<"${CSMOE_TORCHRUN:-torchrun}"  # e.g. "python -m torch.distributed.run"
    (
        trap '' USR1
        exec "${torchrun[@]}" "$@"
    ) &
    pid=$!
    # shellcheck disable=SC2064  # expand $pid now
    trap "echo 'launcher: SIGUSR1, workers save a checkpoint and exit' >&2
          [ -n \"\$usr1_fwd\" ] || { csmoe_forward_usr1 $pid & usr1_fwd=\$!; }" USR1
    # shellcheck disable=SC2064
    trap "kill -TERM $pid 2>/dev/null" TERM
    # shellcheck disable=SC2064
    trap "kill -INT $pid 2>/dev/null" INT
    csmoe_wait "$pid" || rc=$?
    trap - USR1 TERM INT
    if [ -n "$usr1_fwd" ]; then kill "$usr1_fwd" 2>/dev/null || true; fi
    return "$rc"
}
