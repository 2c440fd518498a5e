"""The winners-only competition (`gradient: winners`) on one rank, no spawned processes: equal
to the dense-gradient step when the balance loss is off (every gradient, router included),
with chunked scoring; it keeps far less for backward; top-M candidates against the oracle;
the refusals of its keys. Two and four ranks: test_winners_only_parallel.py."""

import dataclasses

import pytest
import torch

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe import context, metrics
from csmoe_megatron.moe.winners_only import candidate_mask
from tests.moe.layer_harness import (
    BATCH, HIDDEN, SEQ, build_layer, check_parity, make_config, make_experts_distinct,
    tracked_losses, LOSS_NAMES_MAP)
from tests.moe.single_rank import single_rank
from tests.moe.winners_only_check import assert_rows_moved, assert_winners_equal_dense


@pytest.fixture(scope="module", autouse=True)
def _one_rank():
    with single_rank():
        yield


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.reset()  # per-layer rows are sized by the first layer's E
    yield
    metrics.reset()


def _inputs(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(SEQ, BATCH, HIDDEN, generator=gen),
            torch.randn(SEQ, BATCH, HIDDEN, generator=gen))


@pytest.mark.parametrize("dispatcher", ["alltoall", "allgather"])
def test_winners_only_equals_dense_without_balance_loss(dispatcher):
    layer = build_layer(make_config(num_experts=6, top_k=2, glu=True, dispatcher=dispatcher),
                        CompeteSMoEConfig(balance_coef=0.0, diversity_coef=0.1,
                                          router_loss_coef=0.5))
    make_experts_distinct(layer)
    layer.train()
    x, upstream = _inputs()
    assert_winners_equal_dense(layer, x, upstream, token_chunk=3)
    if dispatcher == "alltoall":
        assert_rows_moved(layer, x, upstream)


def _saved_bytes(layer, x, upstream):
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    context.force_competition(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = layer(x.clone().requires_grad_(True))
        out.backward(upstream)
    finally:
        context.force_competition(None)
    tracked_losses(list(LOSS_NAMES_MAP))
    return sum(seen.values())


def test_winners_only_keeps_less_for_backward():
    """E=8, K=2: the dense step keeps every expert's graph; winners-only about K of E."""
    layer = build_layer(make_config(num_experts=8, top_k=2), CompeteSMoEConfig())
    layer.train()
    x, upstream = _inputs()
    winners = _saved_bytes(layer, x, upstream)
    layer.competesmoe = dataclasses.replace(layer.competesmoe, gradient="dense")
    dense = _saved_bytes(layer, x, upstream)
    assert winners < 0.6 * dense, (winners, dense)


@pytest.mark.parametrize("dispatcher", ["alltoall", "allgather"])
def test_candidates_against_the_oracle(dispatcher):
    config = make_config(num_experts=6, top_k=2, dispatcher=dispatcher)
    check_parity(config, CompeteSMoEConfig(candidates=3, token_chunk=2), compete=True)


def test_candidate_mask():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.7, 0.2, 0.1, 0.8]])
    assert candidate_mask(logits, 0) is None and candidate_mask(logits, 4) is None
    assert candidate_mask(logits, 2).tolist() == [[False, True, True, False],
                                                  [True, False, False, True]]


@pytest.mark.parametrize("cs,message", [
    (dict(gradient="sparse"), "gradient must be"),
    (dict(candidates=1), "candidates must be 0"),
    (dict(candidates=5), "candidates must be 0"),
    (dict(candidates=3, gradient="dense"), "needs gradient 'winners'"),
    (dict(candidates=3, combine="full"), "needs gradient 'winners'"),
])
def test_refusals(cs, message):
    with pytest.raises(ValueError, match=message):
        build_layer(make_config(num_experts=4, top_k=2), CompeteSMoEConfig(**cs))
