"""The winners-only competition (`gradient: winners`) on two and four expert-parallel ranks
(gloo): equal to the dense-gradient step with the balance loss off (every gradient, router
included; alltoall and allgather), each token reaches each EP rank at most once and only the
winners' rows come back (counted), and top-M candidates match the dense oracle."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.dist_utils import run_distributed  # noqa: E402


def _worker(rank, world_size):
    import dataclasses

    import torch

    from csmoe_megatron.config.schema import CompeteSMoEConfig
    from tests.moe.layer_harness import (BATCH, HIDDEN, SEQ, build_layer, check_parity,
                                         make_config, make_experts_distinct)
    from tests.moe.winners_only_check import assert_rows_moved, assert_winners_equal_dense

    gen = torch.Generator().manual_seed(30 + rank)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    upstream = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    dispatchers = ("alltoall", "allgather") if world_size == 2 else ("alltoall",)
    for dispatcher in dispatchers:
        config = make_config(expert=world_size, num_experts=8, top_k=2, dispatcher=dispatcher)
        layer = build_layer(config, CompeteSMoEConfig(balance_coef=0.0, diversity_coef=0.1))
        make_experts_distinct(layer)
        layer.train()
        assert_winners_equal_dense(layer, x, upstream, token_chunk=3)
        if dispatcher == "alltoall":
            _, _, copies, tokens = assert_rows_moved(layer, x, upstream)
            assert copies == tokens * world_size
            layer.competesmoe = dataclasses.replace(layer.competesmoe, candidates=3)
            _, _, copies, tokens = assert_rows_moved(layer, x, upstream)
            assert copies < tokens * world_size  # some tokens skip a rank
    # Top-M candidates against the dense oracle (default balance loss, losers detached).
    config = make_config(expert=world_size, num_experts=8, top_k=2)
    check_parity(config, CompeteSMoEConfig(candidates=3), compete=True)


@pytest.mark.parametrize("world", [2, 4])
def test_winners_only_on_expert_parallel_ranks(world):
    run_distributed(_worker, world, parallel=dict(expert=world))
