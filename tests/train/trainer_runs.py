"""Run the real trainer (`python -m csmoe_megatron.train`, under torchrun for N ranks) in a
subprocess and read back what it wrote. Used by the training tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A tiny, fast experiment on megatron's mock data: 4 steps of a 2-layer MoE model.
TINY = [
    "data.source=mock", "model.vocab_size=128", "model.moe.router=topk",
    "train.steps=4", "train.lr_warmup_steps=1", "train.global_batch_size=8",
    "train.micro_batch_size=2", "train.eval_interval=0", "logging.interval=1",
    "logging.tensorboard=false", "checkpoint.save_at_end=false", "parallel.expert=1",
]


# Parallel layouts the tests train in: name -> (processes, overrides).
LAYOUTS = {
    "ep2": (2, ["parallel.expert=2"]),
    "ep4": (4, ["parallel.expert=4"]),
    "tp2_sp_ep2": (4, ["parallel.tensor=2", "parallel.sequence_parallel=true", "parallel.expert=2"]),
    "ep2_etp2": (4, ["parallel.expert=2", "parallel.expert_tensor=2"]),
    "pp2": (2, ["parallel.pipeline=2"]),
    "pp2_ep2": (4, ["parallel.pipeline=2", "parallel.expert=2"]),
    "dp2_distopt": (2, ["parallel.distributed_optimizer=true"]),
    # The DP communication overlapped with backward / the next forward (GPU configs use it).
    "ep2_dp4_distopt_overlap": (4, ["parallel.expert=2", "parallel.distributed_optimizer=true",
                                    "parallel.overlap_grad_reduce=true",
                                    "parallel.overlap_param_gather=true"]),
    "allgather_ep2": (2, ["parallel.expert=2", "model.moe.token_dispatcher=allgather"]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trainer(nproc: int, run_dir: Path, overrides: list[str], config: str = "configs/cpu_tiny.yaml",
                timeout: int = 240, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", "-m", "csmoe_megatron.train"]
    cmd += ["--config", str(REPO / config), f"run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]
