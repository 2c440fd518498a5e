"""The winners-only competition (winners_combine.compete) against the full combine of the same
layer (every expert output brought back and scored where the token lives): affinities, winners,
gates, winner outputs and every gradient must agree. Used on one rank and on two."""

from __future__ import annotations

import torch

from csmoe_megatron.moe import winners_combine


def _competition(layer, x, winners: bool):
    cs = layer.competesmoe
    if winners:
        return winners_combine.compete(layer.token_dispatcher, layer.routed_experts_compute, x,
                                       layer.router.weight, layer.config.moe_router_topk,
                                       cs.gate_norm, cs.token_chunk)
    return layer._full_combine(x)


def assert_winners_equal_full(layer, x: torch.Tensor, upstream: torch.Tensor):
    """x [S, B, H]; upstream [S*B, H]. Returns the winners' Competition."""
    top_k, hidden = layer.config.moe_router_topk, x.shape[-1]
    tokens = x.numel() // hidden
    results = []
    for winners in (True, False):
        layer.zero_grad(set_to_none=True)
        got = _competition(layer, x, winners)
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
        1, order.unsqueeze(-1).expand(-1, -1, hidden)))
    torch.testing.assert_close(win.top_gates, full[3].gather(1, order))
    assert win.winner_outs.shape == (tokens, top_k, hidden)
    # Winners in ascending expert order, each the output of that expert.
    experts = torch.nonzero(win.winners_mask)[:, 1].view(tokens, top_k)
    assert torch.equal(experts, experts.sort(dim=1).values)
    dense = layer.dense_expert_outputs(x).detach()
    torch.testing.assert_close(win.winner_outs.detach(),
                               dense.gather(1, experts.unsqueeze(-1).expand(-1, -1, hidden)))
    assert win_grads.keys() == full_grads.keys() and len(win_grads) > 0
    for name, grad in win_grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)
    return win
