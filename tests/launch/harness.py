"""Shared helpers for the launch tests: a tiny mock-data experiment, the environment the
launchers run in, and readers for what a run leaves in its directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "cpu_tiny.yaml"
DOUBLES = Path(__file__).resolve().parent / "doubles"
# Seconds-long runs: mock data, native top-k router, no eval, every step logged.
TINY = ["data.source=mock", "model.vocab_size=128", "model.moe.router=topk",
        "train.lr_warmup_steps=1", "train.eval_interval=0", "logging.tensorboard=false",
        "logging.interval=1", "logging.routing_images_interval=0"]


def tiny(steps: int, *extra: str) -> list[str]:
    return [*TINY, f"train.steps={steps}", *extra]


def launch_env(**extra: str) -> dict:
    """The venv's bin first on PATH (torchrun), loopback-only gloo, one thread per rank."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               CSMOE_TEST_PYTHON=sys.executable)
    env.update(extra)
    return env


def run(cmd: list, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=REPO, env=launch_env(**env), text=True,
                          capture_output=True, timeout=timeout)


def start(cmd: list, log: Path, **env: str) -> subprocess.Popen:
    """Start a launcher in the background, output to `log`, in its own process group."""
    return subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=launch_env(**env),
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """Cleanup after a test: the launcher we started and every process under it."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGCONT)
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def workers(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """The trainer processes under a launcher, by their RANK."""
    found = {}
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "csmoe_megatron.train" in p.cmdline() and "RANK" in p.environ():
                if "torch.distributed.run" not in " ".join(p.cmdline()):
                    found[int(p.environ()["RANK"])] = p
        except psutil.NoSuchProcess:
            pass
    return found


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}


def latest(run_dir: Path) -> str | None:
    marker = Path(run_dir) / "checkpoints" / "latest"
    return marker.read_text().strip() if marker.is_file() else None


def run_info(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / "run_info.json").read_text())["launches"]


def tail(text: str, n: int = 3000) -> str:
    return text[-n:]
