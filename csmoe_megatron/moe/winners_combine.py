"""Communication-optimal competition step for the alltoall dispatcher (`combine: winners`).

The full path (dispatch.py) brings all E expert outputs of every token back to its source rank
(E x H values a token) and scores them there. Only the affinities are needed before the winners
are known, and only the K winners' outputs are needed after (spec §6). So, per competition step:

1. dispatch every token to every expert as the full path does (dense mode: all-ones routing map,
   unit probs), run the experts and megatron's combine_preprocess, whose expert-TP
   reduce-scatter makes the rows full hidden width (the affinity is a mean over all H features);
2. expert side: one affinity per row, s = mean_H softplus(g(x)) (fp32);
3. all-to-all the affinities back with the combine's split sizes: on the source rank they arrive
   in the dispatch (expert-major [E, T]) order, i.e. affinity[T, E];
4. source side: winners and gates; the keep mask (a byte per row, expert-major) goes back to the
   expert ranks with the dispatch's split sizes, so it lines up with their received rows;
5. expert ranks send only the kept rows. Both sides derive the new split sizes from the mask
   (the source sums its mask per destination, the expert per source), no extra exchange.
   The source places the K rows of each token and the layer combines them with the gates.

Everything stays differentiable: megatron's all_to_all autograd function runs the reverse
all-to-all in backward, so the task loss reaches the experts through the affinities (the gates
are not detached) and through the winners' outputs. The source rank never holds [T, E, H].
The kept rows' split sizes depend on the data: both sides' counts come to the host in one
read per competing layer (`_host_split_sizes`), as megatron's dispatcher reads its split sizes
once per layer; everything else stays on the device (the winners' positions come from top-K,
the kept rows from a fixed-size nonzero).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from megatron.core.tensor_parallel import all_to_all

from .affinity import gates_from_affinity, neural_response
from .dispatch import unit_routing


class Competition(NamedTuple):
    affinity: torch.Tensor  # [T, E], >= fp32, graph to the experts
    winners_mask: torch.Tensor  # [T, E] bool
    winner_outs: torch.Tensor  # [T, K, H], winners in ascending expert order
    top_gates: torch.Tensor  # [T, K], aligned with winner_outs


def row_affinities(rows: torch.Tensor, chunk_rows: int = 0) -> torch.Tensor:
    """neural_response per row; chunked so softplus's >= fp32 copy stays [chunk_rows, H]."""
    if chunk_rows <= 0 or chunk_rows >= rows.shape[0]:
        return neural_response(rows)
    return torch.cat([neural_response(part) for part in rows.split(chunk_rows)])


def _segment_sums(mask: torch.Tensor, splits: list) -> torch.Tensor:
    """Kept rows per EP peer: `mask` cut by the host-known `splits`, summed on the device."""
    return torch.stack([part.sum() for part in mask.split(splits)])


def _splits(splits) -> Optional[list]:
    return None if splits is None else [int(s) for s in splits]


def _host_split_sizes(keep_source: torch.Tensor, keep_expert: torch.Tensor,
                      sent: Optional[list], received: Optional[list]):
    """(rows this rank sends back to each peer, rows it receives from each): the one host read
    of a competition step's combine. None with one EP rank (no collective)."""
    if sent is None:
        return None, None
    counts = torch.cat([_segment_sums(keep_expert, received), _segment_sums(keep_source, sent)])
    counts = counts.tolist()
    return counts[: len(received)], counts[len(received):]


def compete(dispatcher, experts_compute, hidden_states: torch.Tensor, like: torch.Tensor,
            top_k: int, gate_norm: str, token_chunk: int = 0) -> Competition:
    """One competition step over `dispatcher` (a CompetitionAlltoAllDispatcher).

    experts_compute: MoELayer.routed_experts_compute (dispatch_postprocess, experts,
    combine_preprocess). token_chunk > 0 bounds the softplus transient to token_chunk x E rows.
    """
    num_experts, hidden = dispatcher.num_experts, hidden_states.shape[-1]
    num_tokens = hidden_states.numel() // hidden
    probs, routing_map = unit_routing(num_tokens, num_experts, like)
    with dispatcher.dense_mode():
        tokens, probs = dispatcher.dispatch_preprocess(hidden_states, routing_map, probs)
        tokens, probs = dispatcher.token_dispatch(tokens, probs)
        rows, _ = experts_compute(tokens, probs)  # [R, H], in the dispatch-received order
    group = dispatcher.ep_group
    # Rows sent to each EP rank (source side) / received from each (expert side).
    sent, received = _splits(dispatcher.input_splits), _splits(dispatcher.output_splits)

    scores = row_affinities(rows, token_chunk * num_experts)  # [R]
    affinity = all_to_all(group, scores, sent, received).view(num_experts, num_tokens).t()
    gates, winners_mask, topk_idx = gates_from_affinity(affinity, top_k, gate_norm)

    keep_source = winners_mask.t().reshape(-1)  # expert-major, the order the rows were sent in
    # uint8: gloo/NCCL all-to-all do not take bool.
    keep_expert = all_to_all(group, keep_source.to(torch.uint8), received, sent).bool()
    send_back, receive = _host_split_sizes(keep_source, keep_expert, sent, received)
    kept = num_tokens * top_k if send_back is None else sum(send_back)  # one EP rank: T*K
    # index_select, not a boolean index: its backward is an index_add, not an accumulating
    # index_put (slow on CPU); nonzero_static: the count is known, no device sync.
    kept_rows = rows.index_select(0, torch.nonzero_static(keep_expert, size=kept).squeeze(1))
    winner_rows = all_to_all(group, kept_rows, receive, send_back)  # [T*K, H], expert-major

    # Kept positions e*T + t in send order (ascending), from top-K; regroup token-major [T, K].
    tokens = torch.arange(num_tokens, device=topk_idx.device).unsqueeze(1)
    position = (topk_idx * num_tokens + tokens).flatten().sort().values
    order = torch.argsort(position % num_tokens, stable=True)
    winner_outs = winner_rows.index_select(0, order).view(num_tokens, top_k, hidden)
    winner_experts = (position // num_tokens)[order].view(num_tokens, top_k)
    return Competition(affinity, winners_mask, winner_outs, gates.gather(1, winner_experts))
