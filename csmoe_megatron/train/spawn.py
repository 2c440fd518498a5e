"""`csmoe-train --nproc N`: start N local workers with torch's own launcher (torchrun,
`python -m torch.distributed.run --standalone`), so one command trains a multi-rank layout
without torchrun on PATH. Signals reach the workers as with launch/torchrun.sh: SIGUSR1
(SLURM's warning) goes straight to the workers, which save and exit (torchrun itself would die
of it); SIGTERM and SIGINT go to torchrun, which passes them on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# Set in the workers' environment: the command already validated the config and printed its
# notes, so the workers validate quietly.
VALIDATED_ENV = "CSMOE_VALIDATED"


def run_local_workers(nproc: int, config: str, overrides: list[str]) -> int:
    """Run torchrun with `nproc` workers of this command; its exit status."""
    import psutil

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(nproc), "-m", "csmoe_megatron.train", "--config", config,
           *overrides]
    env = dict(os.environ, **{VALIDATED_ENV: "1", "PYTHONUNBUFFERED": "1"})
    # torchrun would force one thread per worker; split the cores instead (as the launchers do).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print(f"csmoe-train: starting {nproc} workers: {' '.join(cmd)}", file=sys.stderr, flush=True)
    # torchrun inherits SIGUSR1 ignored (the workers install their own handler); its own
    # session, so a Ctrl-C at the terminal reaches it once, through us.
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        agent = subprocess.Popen(cmd, env=env, start_new_session=True)
    finally:
        signal.signal(signal.SIGUSR1, previous)

    def to_workers(signum, _frame):
        for worker in psutil.Process(agent.pid).children():
            try:
                worker.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    def to_agent(signum, _frame):
        if agent.poll() is None:
            agent.send_signal(signum)

    handlers = {signal.SIGUSR1: to_workers, signal.SIGTERM: to_agent, signal.SIGINT: to_agent}
    saved = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        return agent.wait()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
