"""Shared by the csmoe-ab and csmoe-sweep tests: a tiny experiment and a tool runner."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["parallel.expert=1", "model.num_layers=1", "model.hidden_size=32",
        "model.num_attention_heads=2", "model.ffn_hidden_size=64", "model.moe.num_experts=4",
        "model.moe.ffn_hidden_size=32", "model.seq_length=32", "train.steps=2",
        "train.lr_warmup_steps=1", "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.eval_interval=1", "train.eval_iters=1", "logging.interval=1",
        "logging.routing_images_interval=0", "logging.tensorboard=false",
        "checkpoint.save_at_end=false", "model.moe.competesmoe.warmup_fraction=0",
        "model.moe.competesmoe.rate=1.0"]


def run_tool(module: str, args: list, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, **kw)
