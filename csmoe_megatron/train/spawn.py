"""`csmoe-train --nproc N`: start N local workers with torch's own launcher (torchrun,
`python -m torch.distributed.run --standalone`), so one command trains a multi-rank layout
without torchrun on PATH. Stop signals behave as with launch/torchrun.sh (lib/signals.sh):
SIGUSR1 and SIGTERM go to the workers, which finish the step, save and exit 0, while torchrun,
which ignores both, keeps supervising them (on SIGTERM torchrun would tear them down instead);
SIGINT goes to torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

# Set in the workers' environment: the command already validated the config and printed its
# notes, so the workers validate quietly.
VALIDATED_ENV = "CSMOE_VALIDATED"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (/proc's SigCgt mask); True where /proc
    cannot tell."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return not os.path.isdir("/proc")


def _forward_until_exit(agent: subprocess.Popen, signum: int) -> None:
    """`signum` once to each worker of `agent`, as soon as the worker catches it: a worker still
    starting ignores it (inherited from torchrun) and would lose it; repeating it blindly could
    kill a worker that is exiting (default action restored)."""
    import psutil

    sent: set[int] = set()
    while agent.poll() is None:
        try:
            workers = psutil.Process(agent.pid).children()
        except psutil.NoSuchProcess:
            return
        for worker in workers:
            if worker.pid not in sent and _catches(worker.pid, signum):
                try:
                    worker.send_signal(signum)
                    sent.add(worker.pid)
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.5)


def run_local_workers(nproc: int, config: str, overrides: list[str]) -> int:
    """Run torchrun with `nproc` workers of this command; its exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(nproc), "-m", "csmoe_megatron.train", "--config", config,
           *overrides]
    env = dict(os.environ, **{VALIDATED_ENV: "1", "PYTHONUNBUFFERED": "1"})
    # torchrun would force one thread per worker; split the cores instead (as the launchers do).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Not in torchrun's signals to handle (PET_ for --signals-to-handle, the other for older
    # releases): it must survive a SIGTERM and leave the stop to its workers.
    env["PET_SIGNALS_TO_HANDLE"] = env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGINT,SIGHUP,SIGQUIT"
    print(f"csmoe-train: starting {nproc} workers: {' '.join(cmd)}", file=sys.stderr, flush=True)
    # torchrun inherits the stop signals ignored (the workers install their own handlers); its
    # own session, so a Ctrl-C at the terminal reaches it once, through us.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        agent = subprocess.Popen(cmd, env=env, start_new_session=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    forwarding: list[threading.Thread] = []

    def to_workers(signum, _frame):
        print(f"csmoe-train: {signal.Signals(signum).name}, workers finish their step, save a "
              f"checkpoint and exit", file=sys.stderr, flush=True)
        if not forwarding:  # once: a second signal (SLURM may send two) adds nothing
            forwarding.append(threading.Thread(target=_forward_until_exit, args=(agent, signum),
                                               daemon=True))
            forwarding[0].start()

    def to_agent(signum, _frame):
        if agent.poll() is None:
            agent.send_signal(signum)

    handlers = {signal.SIGUSR1: to_workers, signal.SIGTERM: to_workers, signal.SIGINT: to_agent}
    saved = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        return agent.wait()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
