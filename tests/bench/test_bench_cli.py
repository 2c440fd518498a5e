"""`csmoe-bench moe-layer --json` prints its figures, and the JSON object last (no timing
thresholds: only that the measurements exist and are consistent)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--tokens", "64", "--iters", "1", "--warmup", "0"]


def _bench(*args) -> subprocess.Popen:
    """A single-process `moe-layer --json` run, as a user starts it (no MASTER_PORT set)."""
    env = {key: value for key, value in os.environ.items() if key != "MASTER_PORT"}
    return subprocess.Popen([sys.executable, "-m", "csmoe_megatron.bench", "moe-layer", "--json",
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def _report(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_moe_layer_bench_prints_its_four_figures_as_json_last():
    report = _report(_bench())
    # (a) router step vs megatron's MoELayer, (b) competition vs router against E/K,
    # (c) all-to-all rows per token vs the minimum, (d) memory of both kinds of step.
    for key in ("router_overhead_vs_native", "competition_over_router", "cost_model_E_over_K",
                "router_a2a_rows_per_token", "router_a2a_min_rows_per_token",
                "competition_a2a_rows_per_token", "competition_a2a_min_rows_per_token",
                "router_saved_bytes", "competition_saved_bytes", "experts", "top_k"):
        assert key in report, key
    assert report["cost_model_E_over_K"] == report["experts"] / report["top_k"]
    # Winners-only (the default) sends a token once to each EP rank (replicated there to the
    # local experts), so it moves less than the every-expert minimum, within its own bound.
    assert report["competition_a2a_rows_per_token"] >= report["ep"] + report["top_k"]
    assert (report["competition_a2a_rows_per_token_fwd_bwd"]
            <= 1.05 * report["competition_a2a_bound_fwd_bwd"])
    assert report["router_a2a_rows_per_token_fwd_bwd"] > report["router_a2a_rows_per_token"]
    # It keeps about a router step's activations; the full (dense) path keeps every expert's.
    assert report["competition_full_saved_bytes"] > 2 * report["competition_saved_bytes"]
    assert report["cost_model_competition"] == (report["experts"] + 3 * report["top_k"]) / (
        3 * report["top_k"])
    # The winners combine (the default) moves less than the full one.
    assert report["competition_a2a_rows_per_token"] < report["competition_full_a2a_rows_per_token"]
    # (e) model FLOPs and their rate; MFU needs a GPU's peak.
    assert report["dtype"] == "fp32"
    for key in ("flops_router_step", "flops_competition_step", "router_tflops",
                "competition_tflops"):
        assert report[key] > 0, key
    assert report["flops_competition_step"] > report["flops_router_step"]
    assert "router_mfu" in report and "competition_mfu" in report
    if report["device"] == "cpu":
        assert report["router_mfu"] is None and report["competition_mfu"] is None


def test_moe_layer_bench_in_bf16():
    report = _report(_bench("--dtype", "bf16", "--candidates", "3", *SMALL))
    assert report["dtype"] == "bf16" and report["candidates"] == 3
    assert report["cost_model_competition"] == (3 + 3 * report["top_k"]) / (3 * report["top_k"])


def test_two_moe_layer_benches_at_once_do_not_clash_on_a_port():
    runs = [_bench(*SMALL) for _ in range(2)]  # a fixed default port failed the second
    try:
        for run in runs:
            _report(run)
    finally:
        for run in runs:
            run.kill()  # no-op once it has exited


def test_unknown_benchmark_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "csmoe_megatron.bench", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "moe-layer" in proc.stderr
