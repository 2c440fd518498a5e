"""One CompeteSMoE run under PP=2 x VPP=2 (interleaved 1F1B, 4 layers over 2 ranks), checked for
what it writes: a stop-and-resume gives the uninterrupted run's losses exactly; checkpoints
beyond checkpoint.keep_last are pruned, across launches too; TensorBoard holds the step
scalars and the routing images, which are also written as PNG files.

Three launches in all (module-scoped): straight (6 steps), then interrupted (3) + resumed (3).
"""

import pytest

from tests.train.trainer_runs import TINY, read_metrics, run_trainer

STEPS = 6
RUN = [o for o in TINY if not o.startswith(("train.steps", "model.moe.router",
                                             "logging.tensorboard"))] + [
    f"train.steps={STEPS}", "model.num_layers=4", "parallel.pipeline=2",
    "parallel.virtual_pipeline=2",
    # Competition on about half the layer-steps from the start: both branches run.
    "model.moe.router=competesmoe", "model.moe.competesmoe.rate=0.5",
    "model.moe.competesmoe.warmup_fraction=0.0",
    # Saves at 2, 4, 6: three checkpoints, two kept.
    "checkpoint.save_interval=2", "checkpoint.keep_last=2",
    "logging.tensorboard=true", "logging.routing_images_interval=2",
]
IMAGE_STEPS = [2, 4, 6]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    straight = tmp_path_factory.mktemp("vpp_straight")
    resumed = tmp_path_factory.mktemp("vpp_resumed")
    straight_proc = run_trainer(2, straight, RUN)
    run_trainer(2, resumed, RUN + ["train.exit_after_steps=3"])
    first_launch = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    run_trainer(2, resumed, RUN)
    return dict(straight=straight, resumed=resumed, straight_log=straight_proc.stdout,
                first_launch=first_launch)


def _records(run_dir, key):
    return [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]


def test_resume_under_vpp_with_competesmoe_continues_exactly(runs):
    straight, resumed = runs["straight"], runs["resumed"]
    assert [m["step"] for m in read_metrics(resumed)] == list(range(1, STEPS + 1))
    # Bit-exact: same data order, schedule, RNG and optimizer state after the resume.
    for key in ("loss", "grad_norm", "moe/competesmoe_distillation_loss",
                "moe/load_balancing_loss", "moe/competition_rate"):
        assert _records(resumed, key) == _records(straight, key), key
    # Both branches ran, so the CompeteSMoE state after the resume was exercised.
    rates = [r for _, r in _records(straight, "moe/competition_rate")]
    assert any(r > 0 for r in rates) and any(r < 1 for r in rates), rates


def test_keep_last_keeps_the_newest_checkpoints(runs):
    # Straight run: saved at 2, 4 and 6 (the log says so), keep_last=2 leaves 4 and 6.
    assert runs["straight_log"].count("saved checkpoint at step") == 3
    root = runs["straight"] / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000004", "iter_0000006", "latest"]
    assert (root / "latest").read_text().strip() == "iter_0000006"
    # Across launches: the first launch kept 2 and 3; the second saved 4 and 6 and pruned both.
    assert runs["first_launch"] == ["iter_0000002", "iter_0000003", "latest"]
    root = runs["resumed"] / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000004", "iter_0000006", "latest"]
    assert (root / "latest").read_text().strip() == "iter_0000006"


def test_tensorboard_scalars_and_routing_images(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs["straight"]
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss", "lr", "grad_norm", "moe/load_balancing_loss", "moe/competition_rate",
                "moe/layer3/competed", "moe/competesmoe_distillation_loss"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == list(range(1, STEPS + 1))
    # Every number of metrics.jsonl is a TensorBoard scalar at the same steps (per-layer losses
    # only at the steps where that layer took that branch).
    for tag in tags["scalars"]:
        assert [e.step for e in events.Scalars(tag)] == [s for s, _ in _records(run_dir, tag)], tag
    assert [e.value for e in events.Scalars("loss")] == \
        pytest.approx([loss for _, loss in _records(run_dir, "loss")], rel=1e-6)
    # Competition losses are logged at the steps where some layer competed.
    competed = [s for s, rate in _records(run_dir, "moe/competition_rate") if rate > 0]
    assert [e.step for e in events.Scalars("moe/competesmoe_distillation_loss")] == competed
    assert {t for t in tags["scalars"] if t.startswith("moe/")} >= \
        {f"moe/layer{k}/agreement" for k in range(4)}

    assert "moe/expert_load" in tags["images"], tags["images"]
    assert "moe/router_competition_agreement" in tags["images"], tags["images"]
    loads = events.Images("moe/expert_load")
    assert [e.step for e in loads] == IMAGE_STEPS
    for image in loads + events.Images("moe/router_competition_agreement"):
        assert image.width > 0 and image.height > 0
        assert image.encoded_image_string.startswith(b"\x89PNG\r\n\x1a\n")

    pngs = sorted((run_dir / "routing").glob("*.png"))
    assert pngs, "no routing images written under <run.dir>/routing/"
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), png
