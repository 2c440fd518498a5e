"""Checks of the winners-only competition (`gradient: winners`) shared by the one-rank and
multi-rank tests: equality with the dense-gradient path, and the rows it moves."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from csmoe_megatron.moe import context, winners_only_alltoall
from tests.moe.layer_harness import LOSS_NAMES_MAP, step, tracked_losses


def _grads(layer):
    return {n: p.grad.detach().clone() for n, p in layer.named_parameters() if p.grad is not None}


def competition_step(layer, x, upstream):
    """One competition forward-backward: (output, input grad, param grads, logged losses)."""
    layer.zero_grad(set_to_none=True)
    context.force_competition(True)
    try:
        out, input_grad = step(layer, x, upstream)
    finally:
        context.force_competition(None)
    return out, input_grad, _grads(layer), tracked_losses(list(LOSS_NAMES_MAP))


def assert_winners_equal_dense(layer, x, upstream, **winners_overrides):
    """With balance_coef 0 the winners-only step and the dense-gradient step compute the same
    function: outputs, logged losses and every gradient (router included) agree."""
    base = layer.competesmoe
    assert base.balance_coef == 0
    layer.competesmoe = dataclasses.replace(base, gradient="winners", **winners_overrides)
    assert layer.scores_without_graph()
    got = competition_step(layer, x, upstream)
    layer.competesmoe = dataclasses.replace(base, gradient="dense")
    want = competition_step(layer, x, upstream)
    layer.competesmoe = base
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert got[2].keys() == want[2].keys() and any("router" in n for n in got[2])
    for name in got[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-5, rtol=1e-5, msg=name)
    for name in LOSS_NAMES_MAP:
        assert abs(got[3][name] - want[3][name]) <= 1e-5 * max(1.0, abs(want[3][name])), name


class RowCounter:
    """Rows of H values through winners_only_alltoall's all_to_all, forward and backward."""

    def __init__(self, hidden: int):
        self.hidden, self.forward, self.backward, self.in_backward = hidden, 0, 0, False
        self.original = winners_only_alltoall.all_to_all

    def _rows(self, tensor) -> int:
        # H wide, or H + E_local with the candidate mask riding along
        return tensor.shape[0] if tensor.dim() == 2 and tensor.shape[1] >= self.hidden else 0

    def _grad(self, grad):
        self.backward += self._rows(grad)

    def __enter__(self):
        def counting(group, tensor, *rest):
            if self.in_backward:
                self.backward += self._rows(tensor)
                return self.original(group, tensor, *rest)
            self.forward += self._rows(tensor)
            out = self.original(group, tensor, *rest)
            if out.requires_grad:
                out.register_hook(self._grad)
            return out

        winners_only_alltoall.all_to_all = counting
        return self

    def __exit__(self, *exc):
        winners_only_alltoall.all_to_all = self.original


def assert_rows_moved(layer, x, upstream):
    """A token goes once to each EP rank holding one of its candidates; K winner rows come
    back; backward: K gradient rows out, and at most K (at least one) input-gradient rows."""
    ep = layer.token_dispatcher.ep_size
    cs, top_k = layer.competesmoe, layer.config.moe_router_topk
    tokens = x.numel() // x.shape[-1]
    with torch.no_grad():
        logits = layer.router.competition_logits(x)
    experts = logits.shape[-1]
    if cs.candidates and cs.candidates < experts:
        chosen = torch.topk(logits, cs.candidates, dim=-1).indices
        ranks = chosen // (experts // ep)
        copies = sum(len(set(row)) for row in ranks.tolist())
    else:
        copies = tokens * ep
    hidden = x.shape[-1]
    with RowCounter(hidden) as count:
        context.force_competition(True)
        try:
            h = x.clone().requires_grad_(True)
            out, _ = layer(h)
            count.in_backward = True
            out.backward(upstream)
        finally:
            context.force_competition(None)
    tracked_losses(list(LOSS_NAMES_MAP))
    # Each rank counts what it sends: sum over the EP group.
    totals = torch.tensor([count.forward, count.backward, copies, tokens], dtype=torch.long)
    dist.all_reduce(totals, group=layer.token_dispatcher.ep_group)
    forward, backward, copies, tokens = totals.tolist()
    assert forward == copies + tokens * top_k, (forward, copies, tokens)
    assert tokens * (top_k + 1) <= backward <= 2 * tokens * top_k, (backward, tokens)
    return forward, backward, copies, tokens
