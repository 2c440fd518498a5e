"""Competition-step scoring: expert neural responses and the gates they induce (spec §1)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from csmoe_megatron.moe.numerics import at_least_fp32

GateNorm = Literal["sum", "sigmoid"]


def neural_response(expert_out: torch.Tensor) -> torch.Tensor:
    """Affinity s_i(x) = mean over the output features of softplus(g_i(x)) (spec §1, 2025).

    expert_out: [..., D] -> [...]. Computed in at least float32: the scores pick the top-K
    winners and a bf16 mean over D would create spurious ties.
    Differentiable: gates built from it are not detached.
    """
    return F.softplus(at_least_fp32(expert_out)).mean(dim=-1)


def gates_from_affinity(
    affinity: torch.Tensor, top_k: int, norm: GateNorm = "sum"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winners I_C = TopK(s) and their gates (spec §1).

    affinity: [T, E]. norm="sum": w_i = s_i / sum_{j in I_C} s_j (s > 0 thanks to softplus);
    norm="sigmoid": w_i = sigmoid(s_i) / sum_{j in I_C} sigmoid(s_j).
    Returns (gates [T, E] zero off the winners, winners_mask [T, E] bool, topk_idx [T, K]).
    Gates keep their graph to the affinities, so the task loss trains the experts.
    """
    num_experts = affinity.shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
    top_scores, topk_idx = torch.topk(affinity, top_k, dim=-1)
    top_gates = winner_gates(top_scores, norm)
    gates = torch.zeros_like(affinity).scatter(-1, topk_idx, top_gates)
    winners_mask = torch.zeros_like(affinity, dtype=torch.bool).scatter(-1, topk_idx, True)
    return gates, winners_mask, topk_idx


def winner_gates(top_scores: torch.Tensor, norm: GateNorm = "sum") -> torch.Tensor:
    """Gates of the winners from their affinities [T, K]: s_i / sum_j s_j (or sigmoid(s))."""
    if norm == "sigmoid":
        top_scores = torch.sigmoid(top_scores)
    elif norm != "sum":
        raise ValueError(f"norm must be 'sum' or 'sigmoid', got {norm!r}")
    return top_scores / top_scores.sum(dim=-1, keepdim=True)
