"""Winners-only competition step on the alltoall dispatcher (see winners_only.py).

Rows of H values through the expert-parallel all-to-all, a token (spec §6 bound EP + E/H + 3K):
  forward:  one copy to each EP rank holding a candidate (<= EP; with top-M candidates their
            E_local mask values ride along in the same all-to-all), E_local affinities back from
            each (E/H), the winners' keep mask out (E bytes), the K winners' outputs back (K);
  backward: the K winners' output gradients out (K) and the input gradient of each copy that a
            winner used (<= K; `_DispatchOnce` sends back no other row).
With expert-TP the received rows are all-gathered over the expert-TP group as megatron's
dispatcher does, and the winners' partial outputs reduce-scattered.

Host reads: two a competing layer, the split sizes of the dispatch (as megatron's dispatcher
reads its own) and those of the winners' exchange (known only once the winners are).
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import (
    all_to_all,
    gather_from_sequence_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)

from .winners_only import (
    Competition,
    assemble,
    choose_winners,
    run_experts,
    score_rows,
    segment_sums,
)


class _Plan:
    """Split sizes and row indices of one competition step, filled as they become known."""

    def __init__(self, group):
        self.group = group
        self.send_splits = self.recv_splits = None
        self.used_rows = self.used_tokens = None  # expert side / source side
        self.used_back = self.used_in = None  # rows per peer of the input-gradient exchange


class _DispatchOnce(torch.autograd.Function):
    """x [T, H] -> the rows this rank receives (one per token and EP rank), and the `extra`
    columns sent with them in the same all-to-all (the top-M candidate mask; no gradient).
    Backward sends back only the gradients of the rows a winner used: the others are zero."""

    @staticmethod
    def forward(ctx, x, send_tokens, plan, extra):
        ctx.plan, ctx.shape = plan, x.shape
        rows = x.index_select(0, send_tokens)
        if extra is not None:  # 0/1 values: exact in any float dtype
            rows = torch.cat([rows, extra.to(rows.dtype)], dim=1)
        rows = all_to_all(plan.group, rows, plan.recv_splits, plan.send_splits)
        extra = rows[:, x.shape[1]:].contiguous()
        ctx.mark_non_differentiable(extra)
        return rows[:, :x.shape[1]].contiguous(), extra

    @staticmethod
    def backward(ctx, grad_rows, _):
        plan = ctx.plan
        used = grad_rows.index_select(0, plan.used_rows)
        back = all_to_all(plan.group, used, plan.used_in, plan.used_back)
        grad_x = back.new_zeros(ctx.shape).index_add_(0, plan.used_tokens, back)
        return grad_x, None, None, None


def _send_positions(mask_pt: torch.Tensor, count: int) -> torch.Tensor:
    """Flat (peer, token) positions of a [EP, T] mask, peer-major (the send order)."""
    return torch.nonzero_static(mask_pt.reshape(-1), size=count).squeeze(1)


def compete(dispatcher, experts, hidden_states: torch.Tensor, cand, top_k: int,
            gate_norm: str, chunk: int, probs_dtype) -> Competition:
    """One competition step. cand: [T, E] bool (top-M candidates) or None (all compete)."""
    hidden = hidden_states.shape[-1]
    x = hidden_states.reshape(-1, hidden)
    T, dev = x.shape[0], x.device
    ep_size, n_local = dispatcher.ep_size, dispatcher.num_local_experts
    num_experts = ep_size * n_local
    etp, etp_size, etp_rank = dispatcher.tp_group, dispatcher.tp_size, dispatcher.tp_rank
    plan = _Plan(dispatcher.ep_group)

    # 1. Where each token goes, and the split sizes: one host read.
    local_cand = None if cand is None else cand.view(T, ep_size, n_local).transpose(0, 1)
    if cand is None:
        dest = torch.ones(ep_size, T, dtype=torch.bool, device=dev)
        per_expert = torch.full((ep_size, n_local), T, dtype=torch.long, device=dev)
    else:
        dest = local_cand.any(-1)  # [EP, T]
        per_expert = local_cand.sum(1)
    counts = torch.cat([dest.sum(1, keepdim=True), per_expert], dim=1)  # [EP, 1 + E_local]
    with torch.no_grad():
        received = all_to_all(plan.group, counts)  # from each source: rows, per local expert
        if etp_size > 1:
            received = gather_from_sequence_parallel_region(received.view(1, -1), group=etp)
    host = torch.cat([counts[:, 0], received.reshape(-1)]).tolist()
    plan.send_splits = host[:ep_size]
    table = torch.tensor(host[ep_size:]).view(etp_size, ep_size, 1 + n_local)  # host
    plan.recv_splits = table[etp_rank, :, 0].tolist()
    etp_blocks = table[:, :, 0].sum(1).tolist()
    offset, n_own = sum(etp_blocks[:etp_rank]), etp_blocks[etp_rank]
    cand_counts = table[:, :, 1:].sum((0, 1)).tolist()

    # 2. Dispatch once per EP rank; all-gather over expert-TP; score without a graph.
    positions = _send_positions(dest, sum(plan.send_splits))
    send_tokens = positions % T
    sent = None if cand is None else local_cand.reshape(-1, n_local).index_select(0, positions)
    rows, cand_g = _DispatchOnce.apply(x, send_tokens, plan, sent)  # [N_own, H], [N_own, E_l]
    cand_g = None if cand is None else cand_g.to(torch.uint8)
    if etp_size > 1:
        rows = gather_from_sequence_parallel_region(rows, group=etp, output_split_sizes=etp_blocks)
        if cand_g is not None:
            with torch.no_grad():
                cand_g = gather_from_sequence_parallel_region(cand_g, group=etp,
                                                              output_split_sizes=etp_blocks)
    scores = score_rows(experts, rows.detach(), None if cand_g is None else cand_g.bool(),
                        cand_counts, chunk, probs_dtype, etp)
    back = all_to_all(plan.group, scores[offset:offset + n_own], plan.send_splits,
                      plan.recv_splits)  # [sent rows, E_local]
    affinity = back.new_full((ep_size * T, n_local), float("-inf"))
    affinity = affinity.index_copy(0, positions, back).view(ep_size, T, n_local)
    affinity = affinity.transpose(0, 1).reshape(T, num_experts)
    if cand is not None:
        affinity = affinity.masked_fill(~cand, float("-inf"))

    # 3. Winners on the token's rank; their keep mask to the expert ranks.
    winners_mask, winner_experts = choose_winners(affinity, top_k)
    keep_pt = winners_mask.view(T, ep_size, n_local).transpose(0, 1)  # [EP, T, E_local]
    sent_keep = keep_pt.reshape(-1, n_local).index_select(0, positions).to(torch.uint8)
    keep_own = all_to_all(plan.group, sent_keep, plan.recv_splits, plan.send_splits).bool()
    keep_g = keep_own
    if etp_size > 1:
        with torch.no_grad():
            keep_g = gather_from_sequence_parallel_region(keep_own.to(torch.uint8), group=etp,
                                                          output_split_sizes=etp_blocks).bool()

    # 4. The winners' split sizes: the second host read.
    used_own, used_pt = keep_own.any(1), keep_pt.any(-1)
    host = torch.cat([keep_g.sum(0), segment_sums(keep_g.sum(1), etp_blocks),
                      segment_sums(keep_own.sum(1), plan.recv_splits),
                      segment_sums(used_own, plan.recv_splits),
                      keep_pt.sum((1, 2)), used_pt.sum(1)]).tolist()
    per_local, host = host[:n_local], host[n_local:]
    per_block, host = host[:etp_size], host[etp_size:]
    kept_back, plan.used_back, kept_in, plan.used_in = (
        host[i * ep_size:(i + 1) * ep_size] for i in range(4))
    plan.used_rows = torch.nonzero_static(used_own, size=sum(plan.used_back)).squeeze(1)
    plan.used_tokens = _send_positions(used_pt, sum(plan.used_in)) % T

    # 5. The winners again, with gradient, on the rows already here (expert-major for the
    #    experts, then back to (row, expert) order for the exchange).
    pairs = torch.nonzero_static(keep_g.reshape(-1), size=sum(per_local)).squeeze(1)
    order = torch.argsort(pairs % n_local, stable=True)
    inputs = rows.index_select(0, (pairs // n_local).index_select(0, order))
    outs = run_experts(experts, inputs, per_local, probs_dtype)
    outs = outs.index_select(0, torch.argsort(order))
    if etp_size > 1:
        wide = torch.promote_types(outs.dtype, torch.float32)  # megatron reduces in fp32 too
        outs = reduce_scatter_to_sequence_parallel_region(
            outs.to(wide), group=etp, input_split_sizes=per_block).to(outs.dtype)
    winner_rows = all_to_all(plan.group, outs, kept_in, kept_back)  # (peer, token, expert)

    # 6. Token-major, winners in ascending expert order.
    flat = _send_positions(keep_pt, T * top_k)
    token = (flat // n_local) % T
    expert = (flat // (T * n_local)) * n_local + flat % n_local
    regroup = torch.argsort(token * num_experts + expert)
    winner_outs = winner_rows.index_select(0, regroup).view(T, top_k, hidden)
    return assemble(affinity, winners_mask, winner_experts, winner_outs, gate_norm)
