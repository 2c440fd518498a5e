"""csmoe-sweep: a 2x2 grid of a tiny model (one seed, 2 steps each), the same report as
csmoe-ab; and the sweep file's checks."""

import json

import pytest

from csmoe_megatron.analysis.experiment import ExperimentError
from csmoe_megatron.analysis.sweep import grid_arms, load_sweep
from tests.analysis.campaign_runs import TINY, run_tool


def test_grid_names_and_overrides():
    arms = grid_arms({"model.moe.competesmoe.rate": [0.05, 0.1],
                      "model.moe.competesmoe.gate_norm": ["sum", "sigmoid"]})
    assert list(arms) == ["rate=0.05,gate_norm=sum", "rate=0.05,gate_norm=sigmoid",
                          "rate=0.1,gate_norm=sum", "rate=0.1,gate_norm=sigmoid"]
    assert arms["rate=0.1,gate_norm=sigmoid"] == ["model.moe.competesmoe.rate=0.1",
                                                  "model.moe.competesmoe.gate_norm=sigmoid"]


def test_bad_sweep_files_are_refused(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("config: c.yaml\nseeds: [1]\n")
    with pytest.raises(ExperimentError, match="needs `grid`"):
        load_sweep(bad)
    bad.write_text("config: c.yaml\ngrid: {a.b: [1]}\nsteps: 3\n")
    with pytest.raises(ExperimentError, match="unknown key"):
        load_sweep(bad)


def test_two_by_two_grid_trains_four_runs_and_reports(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "config: configs/cpu_tiny.yaml\nseeds: [1]\n"
        f"overrides: [{', '.join(o for o in TINY if o != 'train.steps=2')}, train.steps=1]\n"
        "grid:\n  model.moe.competesmoe.diversity_coef: [0.0, 0.01]\n"
        "  model.moe.competesmoe.balance_count: [top1, all]\n"
        f"out: {tmp_path / 'out'}\n")
    proc = run_tool("csmoe_megatron.analysis.sweep", [sweep, "--nproc", "1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["arms"]) == 4 and report["baseline"] == "diversity_coef=0.0,balance_count=top1"
    config = (tmp_path / "out" / "diversity_coef=0.01,balance_count=all" / "seed1"
              / "config.yaml").read_text()
    assert "diversity_coef: 0.01" in config and "balance_count: all" in config
    assert "csmoe-sweep" in (tmp_path / "out" / "report.md").read_text()
