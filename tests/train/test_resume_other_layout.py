"""A run saved on one parallel layout continues on another: the steps after each resume match
the uninterrupted run (loss, gradient norm, competition decisions, data position, and every
parameter and Adam moment after the last step) within fp32 reduction noise. Changes a resume
cannot follow are refused before anything is written, with one message naming the change.

Three launches of 2 ranks (module-scoped), all with the distributed optimizer and CompeteSMoE
competing on about half the layer-steps: the uninterrupted run, 6 steps on PP=2; its step-2
checkpoint resumed on PP=1 x EP=2 (DP 1 -> 2) for steps 3-4; that run's step-4 checkpoint
resumed on TP=2 with SP, EP=1 (DP 2 -> 1) for steps 5-6, as a user reruns the command.
"""

import io
import json
import shutil
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from csmoe_megatron.train.__main__ import EXIT_CONFIG, main
from csmoe_megatron.train.layout import legacy_world_size, refusal
from tests.train.parity import GRAD_NORM_RTOL, LOSS_ATOL
from tests.train.trainer_runs import REPO, TINY, read_metrics, run_trainer

DISTOPT = ["parallel.distributed_optimizer=true"]
RUN = [o for o in TINY if not o.startswith(("model.moe.router", "train.steps"))] + DISTOPT + [
    "train.steps=6", "checkpoint.save_interval=2", "checkpoint.keep_last=0",
    "model.moe.router=competesmoe",
    "model.moe.competesmoe.rate=0.5", "model.moe.competesmoe.warmup_fraction=0.0"]
PP2 = ["parallel.pipeline=2"]
EP2 = ["parallel.expert=2"]
TP2_SP = ["parallel.tensor=2", "parallel.sequence_parallel=true"]
# Measured (fp32, CPU): losses within 2.4e-7, gradient norms within a relative 5.1e-7
# (parity.py's bounds apply); parameters and Adam moments after the last step within 1.1e-6 of
# each tensor's largest value. Adam moments lost at a resume move the next loss by 0.11.
STATE_RTOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    straight = tmp_path_factory.mktemp("pp2_straight")
    resumed = tmp_path_factory.mktemp("resumed")
    run_trainer(2, straight, RUN + PP2)
    (resumed / "checkpoints").mkdir()
    shutil.copytree(straight / "checkpoints" / "iter_0000002",
                    resumed / "checkpoints" / "iter_0000002")
    (resumed / "checkpoints" / "latest").write_text("iter_0000002\n")
    to_ep2 = run_trainer(2, resumed, RUN + EP2 + ["train.exit_after_steps=2"])
    to_tp2 = run_trainer(2, resumed, RUN + TP2_SP)
    return dict(straight=straight, resumed=resumed, to_ep2=to_ep2.stdout, to_tp2=to_tp2.stdout)


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's newest checkpoint by its global key: model parameters
    ('decoder.', 'embedding.') and optimizer state ('optimizer.state.exp_avg.' + key, ...)."""
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    reader = FileSystemReader(str(ckpt))
    tensors = {key: torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in reader.read_metadata().state_dict_metadata.items()
               if "_extra_state" not in key and hasattr(meta, "size")}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(tensors, storage_reader=reader, no_dist=True)
    return tensors


def test_each_resume_says_what_changed(runs):
    assert "resumed on another layout (parallel.pipeline 2 -> 1, parallel.expert 1 -> 2" \
        in runs["to_ep2"]
    assert "parallel.tensor 1 -> 2, parallel.expert 2 -> 1" in runs["to_tp2"]
    assert "RNG re-seeded from train.seed and the step" in runs["to_tp2"]


def test_resume_on_another_layout_continues_the_run(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    ref = [m for m in read_metrics(straight) if m["step"] > 2]
    got = read_metrics(resumed)
    assert [m["step"] for m in got] == [m["step"] for m in ref] == [3, 4, 5, 6]
    for a, b in zip(got, ref):
        assert abs(a["loss"] - b["loss"]) < LOSS_ATOL, (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=GRAD_NORM_RTOL), a["step"]
        # The competition schedule is a function of (seed, step, layer): the same decisions.
        assert a["moe/competition_rate"] == b["moe/competition_rate"] > 0
        assert a["consumed_samples"] == b["consumed_samples"]
    # Parameters and Adam moments after step 6: the optimizer state crossed the layouts too.
    want, have = _final_state(straight), _final_state(resumed)
    assert sorted(have) == sorted(want)
    for prefix in ("decoder.", "embedding.", "optimizer.state.exp_avg.",
                   "optimizer.state.exp_avg_sq."):
        assert any(key.startswith(prefix) for key in want), prefix
    for key, value in want.items():
        scale = value.abs().max().item()
        err = (have[key] - value).abs().max().item()
        assert err <= STATE_RTOL * scale, f"{key} differs by {err} (largest value {scale})"


def _refused(run_dir: Path, overrides: list[str]) -> str:
    """Launch csmoe-train in this process on `run_dir`; it must refuse with exit 2 and write
    nothing. Returns its message."""
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        rc = main(["--config", str(REPO / "configs/cpu_tiny.yaml"), f"run.dir={run_dir}",
                   *RUN, *overrides])
    assert rc == EXIT_CONFIG, stderr.getvalue()
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    return stderr.getvalue()


@pytest.fixture
def saved_run(runs, tmp_path):
    """A copy of the PP=2 run's checkpoints (written by 2 ranks, distributed optimizer)."""
    shutil.copytree(runs["straight"] / "checkpoints", tmp_path / "checkpoints")
    return tmp_path


def test_a_changed_global_batch_size_is_refused_before_anything_is_written(saved_run):
    message = _refused(saved_run, DISTOPT + ["train.global_batch_size=16"])
    assert message.count("\n") == 1 and "train.global_batch_size changed from 8" in message
    assert "Fix: set train.global_batch_size=8" in message


def test_switching_the_distributed_optimizer_is_refused(saved_run):
    message = _refused(saved_run, ["parallel.distributed_optimizer=false"])
    assert "parallel.distributed_optimizer changed from True" in message
    assert "Fix: set parallel.distributed_optimizer=true" in message


def test_a_checkpoint_without_a_layout_record_resumes_only_on_its_own_world_size(saved_run):
    ckpt = saved_run / "checkpoints" / "iter_0000006"
    progress = json.loads((ckpt / "progress.json").read_text())["progress"]
    layout = progress.pop("layout")
    # Written by a conversion tool: no layout record, but layout-free tensors.
    assert legacy_world_size(ckpt, progress) is None
    assert refusal(None, {**layout, "world_size": 1}, ckpt, None) is None
    # Written before layouts were recorded: the old optimizer format, 2 RNG files.
    del progress["optimizer_format"]
    assert legacy_world_size(ckpt, progress) == 2
    same = {**layout, "pipeline": 1, "expert": 2}  # a layout change it cannot detect
    assert refusal(None, same, ckpt, legacy_world=2) is None
    message = refusal(None, {**layout, "world_size": 1}, ckpt, legacy_world=2)
    assert "written by 2 ranks before checkpoints recorded their parallel layout" in message
