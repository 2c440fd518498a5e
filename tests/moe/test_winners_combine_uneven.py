"""winners_combine on two expert-parallel ranks with uneven exchanges: the experts of rank 0
win most slots, so rank 0 sends back most kept rows and rank 1 few. Every split size of the
winners exchange (the kept-row counts each way) is then uneven, which balanced routing hides
(an equal split, or T x K kept rows per rank, would pass there). The winners-only combine
must still equal the full combine in values and gradients."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.dist_utils import run_distributed  # noqa: E402


def _worker(rank, world_size):
    import torch

    from csmoe_megatron.config.schema import CompeteSMoEConfig
    from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config
    from tests.moe.winners_check import assert_winners_equal_full

    layer = build_layer(make_config(expert=2), CompeteSMoEConfig())
    layer.train()
    if rank == 0:  # experts 0 and 1: large outputs, so large affinities
        with torch.no_grad():
            for expert in layer.experts.local_experts:
                expert.linear_fc2.weight.mul_(50.0)
    gen = torch.Generator().manual_seed(20 + rank)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    upstream = torch.randn(SEQ * BATCH, HIDDEN, generator=gen)
    win = assert_winners_equal_full(layer, x, upstream)
    # Rank 0's experts won most slots of both ranks' tokens: the exchange is lopsided.
    on_rank0 = int(win.winners_mask[:, :2].sum())
    assert on_rank0 >= 0.75 * win.winners_mask.sum(), win.winners_mask


def test_one_sided_winners_exchange_equals_the_full_combine():
    run_distributed(_worker, 2, parallel=dict(expert=2))
