"""Winners-only competition (`competesmoe.gradient: winners`), the pieces both dispatchers share.

A competition step needs every candidate expert's response only to rank the experts and to
build the detached distillation target (spec §6). So:
1. scoring pass, no graph: each local expert runs on the rows it competes for, `token_chunk`
   rows at a time (0: all at once), one expert at a time; the working memory of the pass is
   one expert's activations on one chunk, and nothing of it is kept for backward;
2. the winners (top-K of the scores) are known on the token's rank;
3. the winners run again, with gradient, on the rows their rank already holds; only their
   outputs come back to the token's rank, which scores them again there (same rows, same
   formula), so the gates and every loss take gradient only through the winners.

Exactness: the output, every loss value, and the gradients through the gates, the winners'
outputs, the diversity loss and the (detached-target) distillation loss equal the dense path.
The competition balance loss uses softmax over all E affinities; here the losers' affinities
enter it as constants (the dense path would also send its 0.01-weighted gradient to the losers'
parameters, which needs every expert's backward). `gradient: dense` keeps that path.

Top-M candidates (`competesmoe.candidates`, 0: all E): only the router's top-M experts of a
token (by logit) compete; the others get affinity -inf, i.e. softmax weight 0 in the
distillation target and in the balance loss's probabilities, and never win.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from .affinity import neural_response, winner_gates


class Competition(NamedTuple):
    affinity: torch.Tensor  # [T, E], >= fp32; grad only through the winners' entries
    winners_mask: torch.Tensor  # [T, E] bool
    winner_outs: torch.Tensor  # [T, K, H], winners in ascending expert order
    top_gates: torch.Tensor  # [T, K], aligned with winner_outs


def candidate_mask(logits: torch.Tensor, candidates: int) -> Optional[torch.Tensor]:
    """[T, E] bool, the router's top-M experts of each token; None when all E compete."""
    num_experts = logits.shape[-1]
    if not candidates or candidates >= num_experts:
        return None
    top = torch.topk(logits.detach(), candidates, dim=-1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)


def run_experts(experts, rows: torch.Tensor, tokens_per_expert: list, probs_dtype) -> torch.Tensor:
    """megatron's experts module on rows sorted by local expert (counts known on the host,
    as the experts read them with .tolist()); unit probs, so the output is ungated g(x)."""
    counts = torch.tensor(tokens_per_expert, dtype=torch.long)  # host tensor, no device sync
    probs = torch.ones(rows.shape[0], dtype=probs_dtype, device=rows.device)
    out, _ = experts(rows, counts, probs)
    return out


def run_one_expert(experts, local: int, rows: torch.Tensor, probs_dtype) -> torch.Tensor:
    """Local expert `local` alone on rows: SequentialMLP's own module when it has one (no empty
    calls of the others), else the experts module with the other experts' counts zero."""
    if hasattr(experts, "local_experts") and not (experts.config.fp8 or experts.config.fp4):
        # per_token_scale None: the unit probs' multiply (exact) is skipped, not done
        return experts.local_experts[local](rows, None)[0]
    sizes = [0] * experts.num_local_experts
    sizes[local] = rows.shape[0]
    return run_experts(experts, rows, sizes, probs_dtype)


@torch.no_grad()
def score_rows(experts, rows: torch.Tensor, cand: Optional[torch.Tensor], cand_counts: list,
               chunk: int, probs_dtype, etp_group=None) -> torch.Tensor:
    """Affinity of every (row, local expert) pair that competes, [N, E_local] (>= fp32, 0 where
    the expert is not a candidate of the row). No graph. With expert-TP the partial fc2 sums
    are added over the expert-TP group (in fp32, as megatron's combine does) before scoring.
    cand: [N, E_local] bool or None (all compete); cand_counts: host counts per local expert."""
    num_rows, num_local = rows.shape[0], len(cand_counts)
    dtype = torch.promote_types(rows.dtype, torch.float32)
    aff = torch.zeros(num_rows, num_local, dtype=dtype, device=rows.device)
    split_etp = etp_group is not None and etp_group.size() > 1
    for local in range(num_local):
        count = cand_counts[local]
        idx = None if cand is None else torch.nonzero_static(cand[:, local], size=count).squeeze(1)
        step = chunk if chunk > 0 else max(count, 1)
        for start in range(0, count, step):
            stop = min(start + step, count)
            part = rows[start:stop] if idx is None else rows.index_select(0, idx[start:stop])
            out = run_one_expert(experts, local, part, probs_dtype)
            if split_etp:
                out = out.to(dtype)
                dist.all_reduce(out, group=etp_group)
            scores = neural_response(out)
            if idx is None:
                aff[start:stop, local] = scores
            else:
                aff[idx[start:stop], local] = scores
    return aff


def choose_winners(affinity: torch.Tensor, top_k: int):
    """(winners_mask [T, E] bool, winner experts [T, K] ascending) from the scores."""
    top = torch.topk(affinity, top_k, dim=-1).indices
    mask = torch.zeros_like(affinity, dtype=torch.bool).scatter(-1, top, True)
    return mask, top.sort(dim=-1).values


def assemble(scores: torch.Tensor, winners_mask: torch.Tensor, winner_experts: torch.Tensor,
             winner_outs: torch.Tensor, gate_norm: str) -> Competition:
    """The token's rank: the winners' outputs (with graph) scored again, their gates, and the
    affinity matrix whose winners' entries carry that graph (losers' entries are constants)."""
    winner_scores = neural_response(winner_outs)  # [T, K], graph to the winners' experts
    affinity = scores.to(winner_scores.dtype).scatter(1, winner_experts, winner_scores)
    return Competition(affinity, winners_mask, winner_outs, winner_gates(winner_scores, gate_norm))


def segment_sums(values: torch.Tensor, splits: list) -> torch.Tensor:
    """Sums of `values` over consecutive segments of host-known lengths, on the device."""
    return torch.stack([part.sum() for part in values.split(splits)]).long()
