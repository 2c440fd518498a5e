"""Winners-only competition step on the allgather dispatcher (see winners_only.py).

As megatron's dispatcher does, the tokens of the TP x EP group are all-gathered once, so every
rank holds every token once. Each rank scores its local experts on the tokens they compete
for (no graph; expert-TP partial outputs summed over the expert-TP group), the [T, E_local]
scores are summed over the EP group into [T, E] (disjoint columns), and every rank picks the
same winners. Each rank then runs its local winners again with gradient and places their
outputs in a [T_gathered, K, H] buffer (slot = the winner's rank among the token's winners in
ascending expert order); the usual reduce-scatter over TP x EP returns [T_local, K, H] (EP ranks
fill disjoint slots, expert-TP ranks add partial sums): K x H values a token instead of the
full path's E x H. Gates, output and losses are then computed on the token's rank.

Host reads: the winners' counts per local expert (one a competing layer; with top-M candidates
also the candidates' counts, one more), as megatron's allgather dispatcher reads its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)

from .winners_only import Competition, assemble, choose_winners, run_experts, score_rows


def compete(dispatcher, experts, hidden_states: torch.Tensor, cand, top_k: int,
            gate_norm: str, chunk: int, probs_dtype) -> Competition:
    hidden = hidden_states.shape[-1]
    x = hidden_states.reshape(-1, hidden)
    T = x.shape[0]
    group = dispatcher.tp_ep_group
    spread = dispatcher.tp_size > 1 or dispatcher.ep_size > 1
    n_local, first = dispatcher.num_local_experts, dispatcher.local_expert_indices[0]
    num_experts = dispatcher.num_experts
    local = slice(first, first + n_local)

    x_g = gather_from_sequence_parallel_region(x, group=group) if spread else x  # [T_g, H]
    cand_g = None
    if cand is not None:
        with torch.no_grad():
            cand_g = cand.to(torch.uint8)
            if spread:
                cand_g = gather_from_sequence_parallel_region(cand_g, group=group)
            cand_g = cand_g.bool()
        cand_counts = cand_g[:, local].sum(0).tolist()  # host read (candidates only)
    else:
        cand_counts = [x_g.shape[0]] * n_local
    scores = score_rows(experts, x_g.detach(), None if cand_g is None else cand_g[:, local],
                        cand_counts, chunk, probs_dtype, dispatcher.tp_group)
    affinity = scores.new_zeros(x_g.shape[0], num_experts)
    affinity[:, local] = scores
    if dispatcher.ep_size > 1:
        dist.all_reduce(affinity, group=dispatcher.ep_group)  # disjoint columns: exact
    if cand_g is not None:
        affinity = affinity.masked_fill(~cand_g, float("-inf"))
    winners_mask, _ = choose_winners(affinity, top_k)  # the same on every rank

    # The local winners again, with gradient; expert-major for the experts.
    keep = winners_mask[:, local]  # [T_g, E_local]
    slot = winners_mask.cumsum(dim=1)[:, local] - 1  # rank among the token's winners
    per_local = keep.sum(0).tolist()  # host read: the experts' split sizes
    pairs = torch.nonzero_static(keep.t().reshape(-1), size=sum(per_local)).squeeze(1)
    token = pairs % x_g.shape[0]
    outs = run_experts(experts, x_g.index_select(0, token), per_local, probs_dtype)
    where = token * top_k + slot.t().reshape(-1).index_select(0, pairs)
    wide = torch.promote_types(outs.dtype, torch.float32)  # megatron reduces in fp32 too
    buffer = outs.new_zeros(x_g.shape[0] * top_k, hidden, dtype=wide)
    buffer = buffer.index_add(0, where, outs.to(wide)).view(x_g.shape[0], top_k * hidden)
    if spread:
        buffer = reduce_scatter_to_sequence_parallel_region(buffer, group=group)
    winner_outs = buffer.to(outs.dtype).view(T, top_k, hidden)

    start = group.rank() * T if spread else 0
    affinity, winners_mask = affinity[start:start + T], winners_mask[start:start + T]
    winner_experts = torch.nonzero_static(winners_mask.reshape(-1), size=T * top_k)
    winner_experts = (winner_experts.squeeze(1) % num_experts).view(T, top_k)
    return assemble(affinity, winners_mask, winner_experts, winner_outs, gate_norm)
