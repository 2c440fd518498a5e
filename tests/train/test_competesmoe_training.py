"""CompeteSMoE through the whole trainer: competition steps in every parallel layout match the
single-process run, and the router learns the competition's policy."""

import pytest

from tests.train.parity import SAVE_AT_END, assert_same_training
from tests.train.trainer_runs import LAYOUTS, TINY, losses, read_metrics, run_trainer

# Every layer competes on every step: the strictest test of the competition path.
ALWAYS_COMPETE = [o for o in TINY if not o.startswith("model.moe.router")] + [
    "model.moe.router=competesmoe", "model.moe.competesmoe.rate=1.0",
    "model.moe.competesmoe.warmup_fraction=0.0", "model.moe.competesmoe.max_compete_per_step=0",
]

# The layouts whose MoE layers see different process groups (PP=2 alone adds nothing here).
COMPETITION_LAYOUTS = ("ep2", "ep4", "tp2_sp_ep2", "ep2_etp2", "pp2_ep2", "allgather_ep2",
                       "ep2_dp4_distopt_overlap")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("competesmoe_ep1")
    run_trainer(1, run_dir, ALWAYS_COMPETE + SAVE_AT_END)
    return run_dir


def test_every_step_competes_and_logs_its_losses(reference_run):
    reference = read_metrics(reference_run)
    for record in reference:
        assert record["moe/competition_rate"] == 1.0
        assert record["moe/competesmoe_distillation_loss"] > 0
        assert "moe/layer0/agreement" in record and "moe/layer1/affinity_mean" in record
    assert reference[-1]["loss"] < reference[0]["loss"]


# The layouts run the default combine ("winners" on alltoall); "full" is checked on one.
@pytest.mark.parametrize("name,combine", [(name, "winners") for name in COMPETITION_LAYOUTS]
                         + [("ep2", "full")])
def test_competition_layout_matches_single_process(name, combine, tmp_path, reference_run):
    """Loss, distillation loss, agreement and gradient norm at every step; every parameter
    (router included) after the last."""
    nproc, overrides = LAYOUTS[name]
    run_trainer(nproc, tmp_path, ALWAYS_COMPETE + overrides + SAVE_AT_END
                + [f"model.moe.competesmoe.combine={combine}"])
    assert_same_training(tmp_path, reference_run, f"{name} {combine}",
                         keys=("loss", "moe/competesmoe_distillation_loss", "moe/layer0/agreement"))


def test_router_learns_the_competition_policy(tmp_path):
    # 8 experts, top-2: a random router matches the winners' set on 1/28 of tokens.
    steps = 40
    overrides = [o for o in ALWAYS_COMPETE if not o.startswith("train.steps")] + [
        f"train.steps={steps}", "model.moe.num_experts=8", "model.moe.competesmoe.rate=0.5",
        "model.moe.competesmoe.router_loss_coef=1.0", "train.lr=1e-2", "train.min_lr=1e-3"]
    run_trainer(1, tmp_path, overrides, timeout=400)
    # Each competition step reports the agreement of the layers that competed in it.
    agreement = []
    for record in read_metrics(tmp_path):
        values = [record[k] for k in ("moe/layer0/agreement", "moe/layer1/agreement") if k in record]
        if values:
            agreement.append(sum(values) / len(values))
    assert len(agreement) >= 10
    first, last = agreement[: len(agreement) // 3], agreement[-(len(agreement) // 3):]
    chance = 1 / 28
    assert sum(last) / len(last) > 3 * chance
    assert sum(last) / len(last) > sum(first) / len(first) + 0.05, agreement


def test_bf16_competition_run_trains(tmp_path):
    overrides = [o for o in ALWAYS_COMPETE if not o.startswith("train.steps")] + [
        "train.steps=6", "train.precision=bf16", "parallel.expert=2"]
    run_trainer(2, tmp_path, overrides)
    got = losses(tmp_path)
    assert len(got) == 6 and got[-1] < got[0]


def test_interleaved_pipeline_competition_matches_single_process(tmp_path):
    # 4 layers over PP=2 x VPP=2: each rank holds two non-adjacent layers, so the global
    # MoE-layer index (and with it the schedule and the logged per-layer numbers) must be right.
    four_layers = ALWAYS_COMPETE + ["model.num_layers=4", "model.moe.competesmoe.rate=0.5"] \
        + SAVE_AT_END
    run_trainer(1, tmp_path / "ref", four_layers)
    run_trainer(2, tmp_path / "vpp", four_layers + ["parallel.pipeline=2",
                                                     "parallel.virtual_pipeline=2"])
    assert_same_training(tmp_path / "vpp", tmp_path / "ref", "competition pp2 x vpp2")
    ref, got = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "vpp")
    for a, b in zip(got, ref):
        assert {k: v for k, v in a.items() if k.endswith("/competed")} == \
            {k: v for k, v in b.items() if k.endswith("/competed")}
