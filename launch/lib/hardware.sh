# shellcheck shell=bash
# Sourced by the launchers: how many processes a node runs and how many threads each gets.

# GPUs this process may use: CUDA_VISIBLE_DEVICES when set (SLURM and docker set it), else
# what nvidia-smi lists; 0 without a driver.
csmoe_gpu_count() {
    if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
        case "$CUDA_VISIBLE_DEVICES" in
            "" | -1 | none | NoDevFiles) echo 0 ;;
            *) awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES" ;;
        esac
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

# One process per GPU; on CPU, 2 (the smallest layout that exercises expert parallelism).
csmoe_default_nproc() {
    local gpus
    gpus=$(csmoe_gpu_count)
    if [ "$gpus" -gt 0 ]; then echo "$gpus"; else echo 2; fi
}

# Split this machine's cores among the local processes unless the user chose; torchrun would
# otherwise force OMP_NUM_THREADS=1, which starves CPU-only training.
csmoe_thread_env() {
    local procs=$1 cores
    cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
    if [ -z "${OMP_NUM_THREADS:-}" ]; then
        OMP_NUM_THREADS=$((cores / procs > 0 ? cores / procs : 1))
        export OMP_NUM_THREADS
    fi
    export PYTHONUNBUFFERED=1
}

# Make `-m csmoe_megatron.train` importable from a source checkout that is not pip-installed.
csmoe_python_path() {
    local root=$1
    if [ -d "$root/csmoe_megatron" ]; then
        export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    fi
}
