"""csmoe-ab end to end on a tiny model: 2 arms x 2 seeds x 2 steps, single process, evaluated
on a held-out file; the runs are shared by every test here (one module fixture)."""

import json
import os
import subprocess

import pytest

from csmoe_megatron.analysis.experiment import (ExperimentError, parse_arms, plan_runs,
                                                slurm_array_script)
from tests.analysis.campaign_runs import REPO, TINY, run_tool


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """The default corpus's held-out test part (a few hundred tokens) as a valid set."""
    from csmoe_megatron.data.split_files import main as split_files

    out = tmp_path_factory.mktemp("heldout")
    assert split_files([str(out)]) == 0
    return str(out / "test")


@pytest.fixture(scope="module")
def ab(tmp_path_factory, heldout):
    out = tmp_path_factory.mktemp("ab")
    args = ["--config", "configs/cpu_tiny.yaml", "--seeds", "1,2", "--arms", "competesmoe,topk",
            "--nproc", "1", "--out", out, *TINY, f"data.valid_prefixes=[{heldout}]"]
    proc = run_tool("csmoe_megatron.analysis.ab", args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, args, proc


def test_report_has_intervals_and_paired_differences(ab):
    out, _, proc = ab
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "topk" and report["metric"] == "final_valid_loss"
    finals = {(arm, seed): json.loads((out / arm / f"seed{seed}" / "final_eval.json").read_text())
              for arm in ("competesmoe", "topk") for seed in (1, 2)}
    for arm in ("competesmoe", "topk"):
        e = report["arms"][arm]
        losses = [finals[(arm, s)]["final_valid_loss"] for s in (1, 2)]
        assert e["final_loss"]["n"] == 2
        assert e["final_loss"]["mean"] == pytest.approx(sum(losses) / 2)
        assert e["final_loss"]["ci95_half_width"] > 0
        assert e["final_valid_bpb"]["mean"] > 0 and e["tokens_per_s"]["mean"] > 0
    diffs = report["arms"]["competesmoe"]["vs_baseline"]["differences"]
    assert diffs == pytest.approx([finals[("competesmoe", s)]["final_valid_loss"]
                                   - finals[("topk", s)]["final_valid_loss"] for s in (1, 2)])
    # Competition on every step after a zero warm-up: rate 1, agreement measured.
    assert report["arms"]["competesmoe"]["competition_rate"]["mean"] == pytest.approx(1.0)
    assert 0 <= report["arms"]["competesmoe"]["agreement_overlap"]["mean"] <= 1
    text = (out / "report.md").read_text()
    assert "csmoe-ab --config configs/cpu_tiny.yaml --seeds 1,2" in text and "| topk | 2 |" in text
    for png in ("loss_curves.png", "final_loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(proc.stdout.strip().splitlines()[-1])["baseline"] == "topk"
    # Each run trained its own arm and seed.
    config = (out / "topk" / "seed2" / "config.yaml").read_text()
    assert "router: topk" in config and "seed: 2" in config


def test_finished_runs_are_skipped_and_other_settings_refused(ab):
    out, args, _ = ab
    again = run_tool("csmoe_megatron.analysis.ab", args)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 4
    changed = run_tool("csmoe_megatron.analysis.ab", [*args, "train.lr=1e-3"])
    assert changed.returncode == 2 and "other settings" in changed.stderr


def test_slurm_dry_run_writes_an_array_of_the_unfinished_runs(ab, tmp_path):
    out, args, _ = ab
    fresh = [a if a != out else tmp_path for a in args]
    proc = run_tool("csmoe_megatron.analysis.ab", [*fresh, "--slurm", "--dry-run",
                                                   "--sbatch-option=--gpus-per-node=8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    script = (tmp_path / "runs.sbatch").read_text()
    assert "#SBATCH --array=0-3" in script and "#SBATCH --gpus-per-node=8" in script
    assert "launch/slurm/train.sbatch" in script and "train.seed=2" in script
    assert f"run.dir={tmp_path}/topk/seed2" in script
    assert "--dependency=afterany:JOBID" in proc.stdout and "--report-only" in proc.stdout
    # Task 3 hands its run's arguments to train.sbatch (the exec shown instead of run).
    shown = script.replace("exec bash", "printf '%s\\n'")
    task = subprocess.run(["bash", "-c", shown], env={**os.environ, "SLURM_ARRAY_TASK_ID": "3"},
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert task[0].endswith("launch/slurm/train.sbatch") and task[1] == "configs/cpu_tiny.yaml"
    assert task[-1] == f"run.dir={tmp_path}/topk/seed2" and "model.moe.router=topk" in task
    # Nothing to run: only the report command is printed.
    done = run_tool("csmoe_megatron.analysis.ab", [*args, "--slurm", "--dry-run"])
    assert "sbatch --parsable" not in done.stdout and "--report-only" in done.stdout


def test_arms_from_names_or_yaml_and_bad_input(tmp_path):
    assert parse_arms("topk,sigmoid_bias")["sigmoid_bias"][-1] == "model.moe.aux_loss_coeff=0.0"
    spec = tmp_path / "arms.yaml"
    spec.write_text("- topk\n- wide: {model.moe.top_k: 3, model.moe.router: competesmoe}\n")
    assert parse_arms(str(spec)) == {"topk": parse_arms("topk")["topk"],
                                     "wide": ["model.moe.top_k=3",
                                              "model.moe.router=competesmoe"]}
    with pytest.raises(ExperimentError, match="unknown arm 'softmax'"):
        parse_arms("competesmoe,softmax")
    with pytest.raises(ExperimentError, match="run.dir and train.seed"):
        plan_runs("c.yaml", parse_arms("topk"), [1], ["train.seed=3"], tmp_path)
    runs = plan_runs("c.yaml", parse_arms("topk"), [7], ["train.steps=5"], tmp_path)
    assert runs[0].overrides[0] == "train.steps=5" and runs[0].overrides[-2] == "train.seed=7"
    script = slurm_array_script("c.yaml", runs, REPO, tmp_path, [])
    assert "0) args=(c.yaml train.steps=5" in script
