"""`csmoe-bench moe-layer --json` prints its figures, and the JSON object last (no timing
thresholds: only that the measurements exist and are consistent)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_moe_layer_bench_prints_its_four_figures_as_json_last():
    proc = subprocess.run([sys.executable, "-m", "csmoe_megatron.bench", "moe-layer", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # (a) router step vs megatron's MoELayer, (b) competition vs router against E/K,
    # (c) all-to-all rows per token vs the minimum, (d) memory of both kinds of step.
    for key in ("router_overhead_vs_native", "competition_over_router", "cost_model_E_over_K",
                "router_a2a_rows_per_token", "router_a2a_min_rows_per_token",
                "competition_a2a_rows_per_token", "competition_a2a_min_rows_per_token",
                "router_saved_bytes", "competition_saved_bytes", "experts", "top_k"):
        assert key in report, key
    assert report["cost_model_E_over_K"] == report["experts"] / report["top_k"]
    assert report["competition_a2a_rows_per_token"] >= report["competition_a2a_min_rows_per_token"]
    assert report["competition_saved_bytes"] > report["router_saved_bytes"]
    # The winners combine (the default) moves less than the full one.
    assert report["competition_a2a_rows_per_token"] < report["competition_full_a2a_rows_per_token"]


def test_unknown_benchmark_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "csmoe_megatron.bench", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "moe-layer" in proc.stderr
