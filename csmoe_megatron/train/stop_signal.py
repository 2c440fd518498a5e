"""SIGUSR1 (SLURM's warning before the time limit) or SIGTERM: finish the step, save, exit 0.

Ranks receive a signal at different times (or only some of them do), so the handler only sets
a flag; the ranks agree on it in the step's one all-reduce (loop._step_outcome) and all stop
after the same step.

A stop signal often reaches a worker's whole process group, not just the worker: torchrun
starts each worker in a session of its own and signals it with killpg, SLURM signals every
process of a job step. The group also holds megatron's checkpoint-writer helper, a
multiprocessing Manager process that megatron starts at a run's first save and reuses for every
later one. Killed by the signal, it left the final save failing with BrokenPipeError and an
iter_N.partial/ behind. `shield_checkpoint_writer()` starts that helper with the stop signals
blocked, which it inherits: it keeps running until its worker ends it at exit.
"""

from __future__ import annotations

import signal
from multiprocessing import resource_tracker

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopSignal:
    """Installs the handlers on creation; `received` is True once a stop signal arrived."""

    def __init__(self):
        self.received = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        # A launcher that keeps its torchrun alive through a stop (launch/lib/signals.sh) runs it
        # with the stop signals ignored, which workers inherit; the handlers above replace that.

    def _handle(self, signum, frame):
        self.received = True


def shield_checkpoint_writer() -> None:
    """Start megatron's checkpoint-writer helper process (once; later calls return at once)
    with the stop signals and SIGINT blocked, so that a signal sent to this worker's process
    group leaves it alive. Blocked, not ignored: a signal arriving meanwhile stays pending for
    this worker and is handled right after."""
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
        start = filesystem_async._get_write_results_queue
    except (ImportError, AttributeError):  # a megatron-core without that helper process
        return
    if getattr(filesystem_async, "_results_queue", None) is not None:
        return
    # Starting the Manager starts multiprocessing's resource tracker first when it is not
    # running, and that start unblocks SIGINT and SIGTERM in this thread (its own shielding;
    # the tracker ignores both): start it here, inside the block so that it inherits SIGUSR1
    # blocked too, then block again for the Manager.
    shielded = {*STOP_SIGNALS, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, shielded)
    try:
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, shielded)
        start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
