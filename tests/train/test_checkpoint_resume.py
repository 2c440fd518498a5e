"""Save, stop, resume gives the losses of an uninterrupted run; saves are atomic. (Damaged
checkpoints and `latest` files: test_checkpoint_safety.py.)"""

import shutil

import pytest

from csmoe_megatron.train.checkpoint import latest_checkpoint

from tests.train.trainer_runs import TINY, losses, read_metrics, run_trainer

SIX_STEPS = [o for o in TINY if not o.startswith("train.steps")] + ["train.steps=6"]


@pytest.mark.parametrize("nproc,layout", [
    (1, []),
    (2, ["parallel.expert=2", "parallel.distributed_optimizer=true"]),
    # The GPU configs' choices: CompeteSMoE with competition steps, bf16 (Float16Module), the
    # DP communication overlapped (pending parameter all-gathers at the save).
    (2, ["parallel.expert=2", "parallel.distributed_optimizer=true", "train.precision=bf16",
         "parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true",
         "model.moe.router=competesmoe", "model.moe.competesmoe.rate=0.5",
         "model.moe.competesmoe.warmup_fraction=0.0"]),
], ids=["ep1", "ep2_distopt", "ep2_distopt_bf16_overlap_competesmoe"])
def test_resume_continues_exactly(tmp_path, nproc, layout):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_trainer(nproc, straight, SIX_STEPS + layout)
    run_trainer(nproc, resumed, SIX_STEPS + layout + ["train.exit_after_steps=3"])
    assert [m["step"] for m in read_metrics(resumed)] == [1, 2, 3]
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "iter_0000003"
    run_trainer(nproc, resumed, SIX_STEPS + layout)
    steps = [m["step"] for m in read_metrics(resumed)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert losses(resumed) == losses(straight)  # bit-exact: same data, RNG, optimizer state


def test_partial_save_is_never_latest(tmp_path):
    run_trainer(1, tmp_path, SIX_STEPS + ["train.exit_after_steps=2"])
    root = tmp_path / "checkpoints"
    # A save that crashed half-way leaves iter_N.partial; it must not be picked up.
    shutil.copytree(root / "iter_0000002", root / "iter_0000004.partial")
    assert latest_checkpoint(root) == root / "iter_0000002"
    run_trainer(1, tmp_path, SIX_STEPS)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_latest_naming_a_missing_checkpoint_is_a_clear_error(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest").write_text("iter_0000007\n")
    with pytest.raises(RuntimeError, match="not a complete checkpoint"):
        latest_checkpoint(root)
    proc = run_trainer(1, tmp_path, SIX_STEPS, check=False)
    assert proc.returncode != 0
    assert "not a complete checkpoint" in proc.stderr

