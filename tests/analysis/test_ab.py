"""The A/B harness runs both routers on the same experiment and compares what they logged."""

import json
import os
import subprocess
import sys
from pathlib import Path

from csmoe_megatron.analysis.ab import compare

REPO = Path(__file__).resolve().parents[2]


def test_compare_lines_up_evaluation_steps():
    runs = {"competesmoe": [{"step": 1, "tokens_per_s_avg": 80.0},
                            {"step": 2, "val_loss": 3.0, "tokens_per_s_avg": 90.0}],
            "topk": [{"step": 1, "tokens_per_s_avg": 120.0},
                     {"step": 2, "val_loss": 3.5, "tokens_per_s_avg": 100.0}]}
    report = compare(runs)
    assert report["steps"] == [2]
    assert report["final_val_loss_delta"] == -0.5
    assert report["throughput_ratio_competesmoe_over_topk"] == 0.9


def test_ab_runs_both_routers(tmp_path):
    overrides = ["data.source=mock", "model.vocab_size=128", "train.steps=4",
                 "train.lr_warmup_steps=1", "train.global_batch_size=8", "train.micro_batch_size=2",
                 "train.eval_interval=2", "train.eval_iters=1", "logging.tensorboard=false",
                 "checkpoint.save_at_end=false", "parallel.expert=1",
                 "model.moe.competesmoe.warmup_fraction=0", "model.moe.competesmoe.rate=0.5"]
    proc = subprocess.run([sys.executable, "-m", "csmoe_megatron.analysis.ab", "--config",
                           str(REPO / "configs/cpu_tiny.yaml"), "--nproc", "1", "--out",
                           str(tmp_path), *overrides], cwd=REPO, capture_output=True, text=True,
                          timeout=400, env={**os.environ, "PYTHONPATH": str(REPO),
                                            "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["steps"] == [2, 4]
    assert set(report["final_val_loss"]) == {"competesmoe", "topk"}
    assert (tmp_path / "competesmoe" / "config.yaml").read_text().count("router: competesmoe") == 1
    assert (tmp_path / "topk" / "config.yaml").read_text().count("router: topk") == 1
