"""A real two-node SLURM cluster on this machine for the tests (launch/slurm/local_cluster.sh in
a temporary directory), and what the tests do with it: submit through launch/slurm/submit.sh,
read a job's state, wait for it, find its trainer processes."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.launch.harness import CONFIG, REPO, launch_env, tiny

LOCAL_CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
SUBMIT = REPO / "launch" / "slurm" / "submit.sh"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel")
SBIN = os.pathsep.join(["/usr/sbin", "/sbin"])


def missing_reason() -> str | None:
    """Why the cluster cannot start here, or None when it can."""
    path = f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN}"
    absent = [d for d in DAEMONS if shutil.which(d, path=path) is None]
    if absent:
        return f"SLURM/munge not installed ({', '.join(absent)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts job steps as the submitting user)"
    try:
        for node in ("n1", "n2"):
            socket.gethostbyname(node)
    except OSError:
        if not os.access("/etc/hosts", os.W_OK):
            return ("nodes n1 and n2 do not resolve and /etc/hosts is read-only "
                    "(add '127.0.0.1 n1 n2')")
    return None


def _free_port_base() -> int:
    """A port P with P, P+1, P+2 free (slurmctld, n1, n2)."""
    for base in range(17000, 18000, 10):
        try:
            for port in range(base, base + 3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no three free ports in 17000-18000 for the local SLURM cluster")


@dataclass
class Cluster:
    dir: Path

    @property
    def env(self) -> dict:
        """Where the SLURM commands find this cluster; one rank per node keeps the jobs quick."""
        path = f"{launch_env()['PATH']}{os.pathsep}{SBIN}"
        return launch_env(SLURM_CONF=str(self.dir / "slurm.conf"), PATH=path,
                          CSMOE_NPROC_PER_NODE="1")

    def command(self, *args: str, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], env=self.env, cwd=cwd or REPO, text=True,
                              capture_output=True, timeout=60, check=check)

    def submit(self, workdir: Path, run_dir: Path, steps: int, *overrides: str,
               options: tuple[str, ...] = ("--time", "00:10:00")) -> int:
        """submit.sh --nodes 2 from `workdir` (the job's log lands there): the job id."""
        result = self.command(SUBMIT, "--nodes", "2", "--cpus-per-task", "1", *options, "--",
                              CONFIG, *tiny(steps, f"run.dir={run_dir}", *overrides), cwd=workdir)
        return int(re.search(r"Submitted batch job (\d+)", result.stdout).group(1))

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ...)."""
        out = self.command("scontrol", "-o", "show", "job", str(job_id)).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def processes(self, job_id: int) -> list[psutil.Process]:
        """Every process of this job (by the SLURM_JOB_ID and SLURM_CONF it carries)."""
        want = {"SLURM_JOB_ID": str(job_id), "SLURM_CONF": str(self.dir / "slurm.conf")}
        found = []
        for p in psutil.process_iter():
            try:
                env = p.environ()
                if p.pid != os.getpid() and all(env.get(k) == v for k, v in want.items()):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return found

    def trainers(self, job_id: int) -> list[psutil.Process]:
        """The job's trainer processes (those with a RANK, not torchrun)."""
        found = []
        for p in self.processes(job_id):
            try:
                cmd = " ".join(p.cmdline())
                if ("csmoe_megatron.train" in cmd and "RANK" in p.environ()
                        and "torch.distributed.run" not in cmd and "torchrun" not in cmd):
                    found.append(p)
            except psutil.NoSuchProcess:
                pass
        return found

    def wait_state(self, job_id: int, states: set[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {info['JobState']} (waited for "
                                     f"{sorted(states)} {timeout:.0f}s):\n{log_of(info)[-3000:]}")
            time.sleep(0.5)


def log_of(info: dict[str, str]) -> str:
    path = Path(info.get("StdOut", ""))
    return path.read_text(errors="replace") if path.is_file() else ""


def start_cluster(state_dir: Path) -> Cluster:
    env = dict(os.environ, CSMOE_SLURM_DIR=str(state_dir), CSMOE_SLURM_PORT=str(_free_port_base()),
               PATH=f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN}")
    result = subprocess.run([str(LOCAL_CLUSTER), "start"], env=env, text=True,
                            capture_output=True, timeout=120)
    if result.returncode != 0:
        stop_cluster(state_dir)
        raise RuntimeError(f"local_cluster.sh start failed:\n{result.stderr}")
    return Cluster(state_dir)


def stop_cluster(state_dir: Path) -> None:
    env = dict(os.environ, CSMOE_SLURM_DIR=str(state_dir),
               PATH=f"{os.environ.get('PATH', '')}{os.pathsep}{SBIN}")
    subprocess.run([str(LOCAL_CLUSTER), "stop"], env=env, capture_output=True, timeout=120)
