"""A run saved on one parallel layout continues on another: the steps after the resume match the
uninterrupted run on the first layout (loss, gradient norm, competition decisions, and every
parameter and Adam moment after the last step), within fp32 reduction noise. Changes a resume
cannot follow are refused before anything is written, with one message naming the change.

Four launches in all (module-scoped): for each case the uninterrupted run on layout A (4 steps,
saving at 2 and 4), then its step-2 checkpoint resumed on layout B for steps 3-4.
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
from csmoe_megatron.train.layout import refusal
from tests.train.parity import GRAD_NORM_RTOL, LOSS_ATOL
from tests.train.trainer_runs import REPO, TINY, read_metrics, run_trainer

RUN = [o for o in TINY if not o.startswith("model.moe.router")] + [
    # Competition on about half the layer-steps from the start: steps 3-4 compete.
    "model.moe.router=competesmoe", "model.moe.competesmoe.rate=0.5",
    "model.moe.competesmoe.warmup_fraction=0.0", "checkpoint.save_interval=2"]
DISTOPT = ["parallel.distributed_optimizer=true"]
# name -> (ranks and overrides of layout A, ranks and overrides of layout B)
CASES = {
    "ep2_to_tp2_sp": ((2, DISTOPT + ["parallel.expert=2"]),
                      (2, DISTOPT + ["parallel.tensor=2", "parallel.sequence_parallel=true"])),
    "pp2_to_pp1": ((2, DISTOPT + ["parallel.pipeline=2"]), (1, DISTOPT)),
}
RESUME_AT = "iter_0000002"
# Measured (fp32, CPU, both cases): losses within 1.2e-7, gradient norms within a relative
# 7.3e-7 (parity.py's bounds apply); parameters and Adam moments after the last step within
# 7.4e-7 of each tensor's largest value. Adam moments lost or mis-sliced at the resume move them
# by orders of magnitude more.
STATE_RTOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, ((nproc_a, layout_a), (nproc_b, layout_b)) in CASES.items():
        straight = tmp_path_factory.mktemp(f"{name}_straight")
        resumed = tmp_path_factory.mktemp(f"{name}_resumed")
        run_trainer(nproc_a, straight, RUN + layout_a)
        (resumed / "checkpoints").mkdir()
        shutil.copytree(straight / "checkpoints" / RESUME_AT, resumed / "checkpoints" / RESUME_AT)
        (resumed / "checkpoints" / "latest").write_text(RESUME_AT + "\n")
        proc = run_trainer(nproc_b, resumed, RUN + layout_b)
        out[name] = dict(straight=straight, resumed=resumed, log=proc.stdout)
    return out


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


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_on_another_layout_continues_the_run(runs, name):
    straight, resumed = runs[name]["straight"], runs[name]["resumed"]
    assert "resumed on another layout" in runs[name]["log"]
    ref = [m for m in read_metrics(straight) if m["step"] > 2]
    got = read_metrics(resumed)
    assert [m["step"] for m in got] == [m["step"] for m in ref] == [3, 4]
    for a, b in zip(got, ref):
        assert abs(a["loss"] - b["loss"]) < LOSS_ATOL, (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=GRAD_NORM_RTOL), a["step"]
        # The competition schedule is a function of (seed, step, layer): the same decisions.
        assert a["moe/competition_rate"] == b["moe/competition_rate"] > 0
        assert a["consumed_samples"] == b["consumed_samples"]
    # Parameters and Adam moments after step 4: the optimizer state crossed the layouts too.
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
    """A copy of the EP=2 run's checkpoints (written by 2 ranks, distributed optimizer)."""
    shutil.copytree(runs["ep2_to_tp2_sp"]["straight"] / "checkpoints", tmp_path / "checkpoints")
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
    ckpt = saved_run / "checkpoints" / "iter_0000004"
    progress = json.loads((ckpt / "progress.json").read_text())
    layout = progress["progress"].pop("layout")
    same = {**layout, "tensor": 2, "expert": 1}  # a layout change it cannot detect
    assert refusal(None, same, ckpt, legacy_world=2) is None
    message = refusal(None, {**layout, "world_size": 1}, ckpt, legacy_world=2)
    assert "written by 2 ranks before checkpoints recorded their parallel layout" in message
