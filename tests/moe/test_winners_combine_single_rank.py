"""winners_combine on one rank, fast (no spawned processes): the winners-only competition equals
the full combine's (every expert output brought back, scored where the token lives) in
affinities, winners, gates, winner outputs and gradients; its split-size helpers by hand.
The multi-rank exchange itself is covered by test_layer_parity.py."""

import pytest
import torch

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe import winners_combine
from csmoe_megatron.moe.affinity import neural_response

from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config
from tests.moe.single_rank import single_rank


@pytest.fixture(scope="module", autouse=True)
def _one_rank():
    with single_rank():
        yield


def _competition(layer, x, winners: bool, gate_norm: str, token_chunk: int):
    if winners:
        return winners_combine.compete(layer.token_dispatcher, layer.routed_experts_compute, x,
                                       layer.router.weight, layer.config.moe_router_topk,
                                       gate_norm, token_chunk)
    return layer._full_combine(x)


@pytest.mark.parametrize("gate_norm,token_chunk,top_k", [("sum", 0, 2), ("sigmoid", 3, 3),
                                                         ("sum", 1, 4)])
def test_winners_equal_the_full_combine(gate_norm, token_chunk, top_k):
    config = make_config(top_k=top_k)
    layer = build_layer(config, CompeteSMoEConfig(gate_norm=gate_norm, token_chunk=token_chunk))
    layer.train()
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=torch.Generator().manual_seed(11))
    upstream = torch.randn(SEQ * BATCH, HIDDEN, generator=torch.Generator().manual_seed(12))
    results = []
    for winners in (True, False):
        layer.zero_grad(set_to_none=True)
        got = _competition(layer, x, winners, gate_norm, token_chunk)
        output = (got[3].unsqueeze(-1) * got[2]).sum(dim=1)
        # Gradients through the gates (affinities) and through the winners' outputs.
        ((output * upstream).sum() + got[0].square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        results.append((got, grads))
    (win, win_grads), (full, full_grads) = results
    torch.testing.assert_close(win.affinity, full[0])
    assert torch.equal(win.winners_mask, full[1])
    assert win.winners_mask.sum(dim=1).eq(top_k).all()
    # The full combine keeps its K winners in top-K (affinity) order, winners in ascending
    # expert order: put the full one's in expert order too.
    order = torch.topk(full[0], top_k, dim=-1).indices.argsort(dim=-1)
    torch.testing.assert_close(win.winner_outs, full[2].gather(
        1, order.unsqueeze(-1).expand(-1, -1, HIDDEN)))
    torch.testing.assert_close(win.top_gates, full[3].gather(1, order))
    assert win.winner_outs.shape == (SEQ * BATCH, top_k, HIDDEN)
    # Winners in ascending expert order, each the output of that expert.
    experts = torch.nonzero(win.winners_mask)[:, 1].view(SEQ * BATCH, top_k)
    assert torch.equal(experts, experts.sort(dim=1).values)
    dense = layer.dense_expert_outputs(x).detach()
    torch.testing.assert_close(win.winner_outs.detach(),
                               dense.gather(1, experts.unsqueeze(-1).expand(-1, -1, HIDDEN)))
    assert win_grads.keys() == full_grads.keys() and len(win_grads) > 0
    for name, grad in win_grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)


def test_row_affinities_chunked_equal_unchunked():
    rows = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    whole = neural_response(rows)
    assert whole.shape == (10,)
    for chunk in (0, 1, 3, 10, 11):
        torch.testing.assert_close(winners_combine.row_affinities(rows, chunk), whole)


def test_split_sizes_by_hand():
    keep_expert = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)  # rows received: 2 + 3
    keep_source = torch.tensor([0, 1, 1, 1], dtype=torch.bool)  # rows sent: 1 + 3
    assert winners_combine._segment_sums(keep_expert, [2, 3]).tolist() == [1, 2]
    send_back, receive = winners_combine._host_split_sizes(keep_source, keep_expert,
                                                           sent=[1, 3], received=[2, 3])
    assert (send_back, receive) == ([1, 2], [0, 3])
    assert winners_combine._host_split_sizes(keep_source, keep_expert, None, None) == (None, None)
    assert winners_combine._splits(None) is None
    assert winners_combine._splits(torch.tensor([2, 5])) == [2, 5]
