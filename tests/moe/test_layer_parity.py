"""CompeteSMoELayer on megatron-core vs the dense test oracle (tests/moe/dense_oracle.py):
outputs, logged losses and gradients (router, experts, input) agree to 1e-5 (fp32) on router
and competition steps, under each parallel layout (gloo, CPU)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.dist_utils import run_distributed  # noqa: E402

# name: (world size, parallel groups, config overrides)
LAYOUTS = {
    "ep1": (1, {}, {}),
    "ep2": (2, dict(expert=2), dict(expert=2)),
    "ep4": (4, dict(expert=4), dict(expert=4)),
    "tp2_sp_ep2": (2, dict(tensor=2, expert=2, expert_tensor=1),
                   dict(tensor=2, expert=2, expert_tensor=1, sequence_parallel=True)),
    "tp2_sp_etp2": (2, dict(tensor=2, expert=1, expert_tensor=2),
                    dict(tensor=2, expert=1, expert_tensor=2, sequence_parallel=True)),
    "ep2_etp2": (4, dict(expert=2, expert_tensor=2), dict(expert=2, expert_tensor=2)),
    "allgather_ep2": (2, dict(expert=2), dict(expert=2, dispatcher="allgather")),
    "allgather_tp2_sp_etp2": (2, dict(tensor=2, expert=1, expert_tensor=2),
                              dict(tensor=2, expert_tensor=2, sequence_parallel=True,
                                   dispatcher="allgather")),
}


def _worker(rank, world_size, overrides, cs_overrides=None):
    from csmoe_megatron.config.schema import CompeteSMoEConfig
    from tests.moe.layer_harness import check_parity, make_config

    config = make_config(**overrides)
    cs = CompeteSMoEConfig(**(cs_overrides or {}))
    for compete in (False, True):
        layer = check_parity(config, cs, compete)
    # The winners combine is the alltoall dispatcher's; allgather keeps the full one.
    expect_winners = cs.combine == "winners" and config.moe_token_dispatcher_type == "alltoall"
    assert layer.combines_winners_only() == expect_winners


# combine "winners" (communication-optimal, the default) and "full" (all E outputs back).
@pytest.mark.parametrize("combine", ["winners", "full"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parity(layout, combine):
    world, parallel, overrides = LAYOUTS[layout]
    run_distributed(_worker, world, parallel=parallel, overrides=overrides,
                    cs_overrides=dict(combine=combine))


@pytest.mark.parametrize("combine", ["winners", "full"])
def test_parity_glu_sigmoid_gates_zloss_ep2(combine):
    run_distributed(_worker, 2, parallel=dict(expert=2),
                    overrides=dict(expert=2, glu=True, z_loss_coeff=1e-3),
                    cs_overrides=dict(gate_norm="sigmoid", diversity_coef=0.1,
                                      router_loss_coef=0.5, balance_coef=0.2, token_chunk=3,
                                      combine=combine))


def _capacity_worker(rank, world_size):
    """A capacity factor drops tokens on router steps only: competition stays dropless."""
    from csmoe_megatron.config.schema import CompeteSMoEConfig
    from tests.moe.layer_harness import check_parity, make_config

    config = make_config(expert=2, capacity_factor=0.5)
    for combine in ("winners", "full"):
        check_parity(config, CompeteSMoEConfig(combine=combine), compete=True)


def test_competition_is_dropless_under_capacity_factor():
    run_distributed(_capacity_worker, 2, parallel=dict(expert=2))
