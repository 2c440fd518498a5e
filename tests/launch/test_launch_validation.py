"""Validation runs once, in the launcher, before any worker starts: a refused run prints one
message, exits 2 and leaves an existing run directory byte-identical (launch/torchrun.sh,
launch/slurm/submit.sh, csmoe-train). Under plain torchrun only rank 0 prints. `csmoe-train
--nproc N` starts its own workers, and a run shorter than the config's warm-up just works."""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.launch.harness import (CONFIG, REPO, kill_tree, latest, losses, run, run_info, start,
                                  tail, tiny, wait_until)

TORCHRUN_SH = REPO / "launch" / "torchrun.sh"
SUBMIT = REPO / "launch" / "slurm" / "submit.sh"
CSMOE_TRAIN = Path(sys.executable).parent / "csmoe-train"
REFUSED = {  # what is wrong -> the message that names it
    "missing data": (["data.source=indexed", "data.prefixes=[/nonexistent/x]",
                      "data.tokenizer=/nonexistent/tok"], "data.tokenizer=/nonexistent/tok"),
    "negative lr": (["train.lr=-1"], "train.lr must be > 0"),
    "layout": (["parallel.expert=4"], "world size 2 is not divisible"),
}


@pytest.fixture
def existing_run(tmp_path) -> Path:
    """A run directory from an earlier launch (its files' contents do not matter)."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "iter_0000002").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("train:\n  steps: 2\n")
    (run_dir / "run_info.json").write_text(json.dumps({"launches": [{"argv": ["x"]}]}) + "\n")
    (run_dir / "checkpoints" / "latest").write_text("iter_0000002")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    return run_dir


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_torchrun_sh_refuses_before_any_worker_and_touches_nothing(existing_run, case):
    overrides, message = REFUSED[case]
    before = _snapshot(existing_run)
    result = run([TORCHRUN_SH, "--nproc", 2, "--run-dir", existing_run, CONFIG, *overrides],
                 timeout=60)
    assert result.returncode == 2, tail(result.stdout + result.stderr)
    assert result.stderr.count("configuration error") == 1 and message in result.stderr
    assert "ChildFailedError" not in result.stderr and "Traceback" not in result.stderr
    assert "refused before starting any worker" in result.stderr
    assert _snapshot(existing_run) == before


def test_csmoe_train_refuses_before_writing(existing_run, capsys):
    from csmoe_megatron.train.__main__ import main

    before = _snapshot(existing_run)
    overrides, message = REFUSED["missing data"]
    assert main(["--nproc", "2", "--config", str(CONFIG), *overrides,
                 f"run.dir={existing_run}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert _snapshot(existing_run) == before


def test_submit_refuses_before_sbatch(existing_run, tmp_path):
    from tests.launch.test_launch_slurm import _calls, _slurm_env

    before = _snapshot(existing_run)
    overrides, message = REFUSED["missing data"]
    result = run([SUBMIT, "--nodes", "1", CONFIG, *overrides, f"run.dir={existing_run}"],
                 timeout=60, **_slurm_env(tmp_path, CSMOE_NPROC_PER_NODE="2"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "refused before sbatch" in result.stderr and not _calls(tmp_path, "sbatch")
    assert _snapshot(existing_run) == before


def test_under_plain_torchrun_only_rank_0_prints(existing_run):
    before = _snapshot(existing_run)
    result = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc-per-node", 2, "-m", "csmoe_megatron.train", "--config", CONFIG,
                  "train.lr=-1", f"run.dir={existing_run}"], timeout=120)
    assert result.returncode != 0
    assert result.stderr.count("csmoe-train: configuration error: train.lr must be > 0") == 1
    # torchrun's own summary follows (it reports any non-zero exit); no trace from our code.
    assert f'File "{REPO / "csmoe_megatron"}' not in result.stderr
    assert "exitcode  : 2" in result.stderr
    assert _snapshot(existing_run) == before


def test_csmoe_train_nproc_runs_its_own_workers_and_sigterm_saves(tmp_path):
    # SIGTERM to the command (a cluster's cancel, docker stop): the workers finish their step,
    # save a complete checkpoint and exit 0, as with launch/torchrun.sh.
    run_dir = tmp_path / "run"
    proc = start([CSMOE_TRAIN, "--nproc", 2, "--config", CONFIG, *tiny(500),
                  f"run.dir={run_dir}"], tmp_path / "log")
    try:
        wait_until(lambda: len(losses(run_dir)) >= 1, 240, "the first logged step")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=240)
    finally:
        kill_tree(proc)
    log = (tmp_path / "log").read_text()
    assert rc == 0, tail(log)
    saved = latest(run_dir)
    assert saved is not None and int(saved.split("_")[1]) < 500, tail(log)
    assert not list((run_dir / "checkpoints").glob("*.partial")), tail(log)
    assert run_info(run_dir)[0]["env"]["WORLD_SIZE"] == "2"


def test_torchrun_sh_finds_the_checkout_venv_without_activation(tmp_path):
    venv_torchrun = REPO / ".venv" / "bin" / "torchrun"
    bare = "/usr/bin:/bin"
    if not venv_torchrun.exists() or shutil.which("torchrun", path=bare):
        pytest.skip("needs the checkout's .venv (launch/setup_cpu.sh) and no system torchrun")
    result = run([TORCHRUN_SH, "--dry-run", CONFIG], timeout=30, PATH=bare)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"torchrun.sh: {venv_torchrun} --standalone")
    refused = run([TORCHRUN_SH, "--nproc", 2, CONFIG, "train.lr=-1"], timeout=60, PATH=bare)
    assert refused.returncode == 2 and "train.lr must be > 0" in refused.stderr
