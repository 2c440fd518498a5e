"""CompeteSMoE auxiliary losses and routing metrics, pure functions of one layer's tokens
(spec §2-§3). All take [T, E] (or [T, K, D]) tensors, return unweighted scalars (the
coefficient alpha aside, which is part of L_D's definition) and compute in at least float32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from csmoe_megatron.moe.numerics import at_least_fp32


def router_distillation_loss(
    router_logits: torch.Tensor,
    affinity: torch.Tensor,
    winners_mask: torch.Tensor,
    top_k: int,
    alpha: float,
) -> torch.Tensor:
    """L_D = MSE(s^R, s^C) + alpha * (1/K) * sum_{j in I_C} (s^C_j - s^R_j)^2 (spec §2).

    s^R = softmax(router_logits), s^C = softmax(affinity).detach(), both over all E experts.
    Reduction as in the reference's "hybrid" mode: the first term is F.mse_loss over all T*E
    entries; the winners term is F.mse_loss over the gathered [T, K] entries, i.e. the
    per-token (1/K)*sum over winners, averaged over tokens. Gradient reaches only the router.
    """
    router_probs = torch.softmax(at_least_fp32(router_logits), dim=-1)
    target = torch.softmax(at_least_fp32(affinity.detach()), dim=-1)
    sq_err = (router_probs - target).square()
    full_term = sq_err.mean()
    winners_term = (sq_err * winners_mask).sum(dim=-1).div(top_k).mean()
    return full_term + alpha * winners_term


def diversity_loss(winner_outputs: torch.Tensor, average: str = "matrix") -> torch.Tensor:
    """Cosine similarity among each token's K winners, averaged over tokens (spec §3).

    winner_outputs: [T, K, D]. average="matrix" (default, the authors' code: mean of the
    K x K cosine matrix with its diagonal set to zero, i.e. the off-diagonal sum / K^2);
    "pairs": mean over the K(K-1)/2 distinct pairs i < j, K/(K-1) times "matrix". K = 1 has
    no pairs: returns 0 (kept in the graph so callers can always backprop).
    """
    num_winners = winner_outputs.shape[1]
    if num_winners < 2:
        return at_least_fp32(winner_outputs).sum() * 0.0
    unit = F.normalize(at_least_fp32(winner_outputs), p=2.0, dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # [T, K, K]
    if average == "matrix":
        off_diagonal = 1.0 - torch.eye(num_winners, dtype=cosine.dtype, device=cosine.device)
        return (cosine * off_diagonal).mean()
    if average != "pairs":
        raise ValueError(f"diversity average must be 'matrix' or 'pairs', got {average!r}")
    rows, cols = torch.triu_indices(num_winners, num_winners, offset=1, device=cosine.device)
    return cosine[:, rows, cols].mean()


def competition_balance_counts(affinity: torch.Tensor, winners_mask: torch.Tensor, top_k: int,
                               count: str = "top1") -> tuple[torch.Tensor, int]:
    """(tokens per expert [E] as float, slots per token) for the competition balance loss's f_e.

    count="top1" (default, the authors' code): each token counts once, for its top-1 winner
    (the largest affinity; gate_norm "sigmoid" is monotone, so the same expert); "all": every
    one of the K winner slots counts, as megatron's router aux loss does. No gradient.
    """
    with torch.no_grad():
        if count == "top1":
            top1 = affinity.argmax(dim=-1)
            counts = torch.zeros(affinity.shape[-1], dtype=torch.float32, device=affinity.device)
            counts.scatter_add_(0, top1, torch.ones_like(top1, dtype=torch.float32))
            return counts, 1
        if count != "all":
            raise ValueError(f"balance count must be 'top1' or 'all', got {count!r}")
        return winners_mask.sum(dim=0).float(), top_k


def switch_balance_loss(probs: torch.Tensor, routing_map: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch load-balancing loss E * sum_e f_e * P_e (spec §3).

    f_e = (token-slots routed to e) / (T*K), P_e = mean_t probs[t, e]. Same value as
    megatron-core's switch_load_balancing_loss_func(probs, routing_map.sum(0), T, top_k, E,
    coeff=1) on one micro-batch; differences: no coefficient, no padding mask, and no
    sequence/global-batch token counts (callers that want those pass the whole set).
    f_e is a count, so gradient flows only through probs.
    """
    num_tokens, num_experts = probs.shape
    tokens_per_expert = routing_map.sum(dim=0).float()
    dispatch_fraction = tokens_per_expert / (num_tokens * top_k)
    mean_prob = at_least_fp32(probs).mean(dim=0)
    return num_experts * (dispatch_fraction * mean_prob).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss mean_t logsumexp(logits_t)^2 (spec §3); megatron-core's
    z_loss_func without its coefficient and padding mask."""
    return torch.logsumexp(at_least_fp32(logits), dim=-1).square().mean()


def competition_balance_loss(
    affinity: torch.Tensor, winners_mask: torch.Tensor, top_k: int, count: str = "top1"
) -> torch.Tensor:
    """Switch loss E * sum_e f_e * P_e on the competition assignment with P = softmax(s)
    (spec §3); f_e per `count` (see competition_balance_counts: the authors' top-1 winner by
    default). Not detached (the reference does not detach its balance term on softmax(s)
    either), so it pushes the experts' affinities toward balance."""
    probs = torch.softmax(at_least_fp32(affinity), dim=-1)
    counts, slots = competition_balance_counts(affinity, winners_mask, top_k, count)
    dispatch_fraction = counts / (affinity.shape[0] * slots)
    return affinity.shape[-1] * (dispatch_fraction * probs.mean(dim=0)).sum()


class RoutingAgreement(NamedTuple):
    exact_match: torch.Tensor  # fraction of tokens whose router top-K set == winners set
    slot_overlap: torch.Tensor  # mean over tokens of |router top-K ∩ winners| / K


@torch.no_grad()
def routing_agreement(
    router_logits: torch.Tensor, winners_mask: torch.Tensor, top_k: int
) -> RoutingAgreement:
    """How well the router already imitates the competition policy (metric, no gradient)."""
    router_idx = torch.topk(router_logits, top_k, dim=-1).indices
    router_mask = torch.zeros_like(winners_mask, dtype=torch.bool).scatter(-1, router_idx, True)
    shared = (router_mask & winners_mask.bool()).sum(dim=-1)
    return RoutingAgreement(
        exact_match=(shared == top_k).float().mean(),
        slot_overlap=(shared.float() / top_k).mean(),
    )
