"""Test oracle: a dense CompeteSMoE layer written from the spec alone
(shared/docs/competesmoe.md §1-§3).

Independent of the package on purpose: nothing here imports csmoe_megatron.moe, so a bug in
the layer's gates, neural response or losses cannot hide by being shared with its oracle. The
code favours spelling the spec out (masks, explicit sums over winners, loops over pairs) over
speed; sizes in the tests are tiny.

Weights use torch.nn.Linear layout ([out, in]), no biases. Where the spec leaves a choice, the
oracle follows the authors' code by default (spec §3, docs/competesmoe.md), with the
project's named alternatives (OracleConfig.diversity_average / balance_count):
* diversity "matrix": mean of the K x K winner cosine matrix with a zero diagonal (sum over
  ordered pairs i != j / K^2); "pairs": mean over the K(K-1)/2 distinct pairs;
* competition balance "top1": the Switch loss with f_e over each token's top-1 winner (share
  of the T tokens); "all": over all K winner slots (share of the T*K slots).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Expert = Callable[[torch.Tensor], torch.Tensor]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Scores and losses in at least float32 (half-precision ties would pick other winners)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass(frozen=True)
class MLPExpert:
    """Megatron-style expert g(x) = fc2(act(fc1 x)); with gated_linear_unit fc1 is [2F, H] and
    its output halves (a, b) give act(a) * b (megatron's GLU). fc2: [H_out, F]."""

    fc1_weight: torch.Tensor
    fc2_weight: torch.Tensor
    activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu
    gated_linear_unit: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x @ self.fc1_weight.T
        if self.gated_linear_unit:
            half = hidden.shape[-1] // 2
            hidden = self.activation(hidden[..., :half]) * hidden[..., half:]
        else:
            hidden = self.activation(hidden)
        return hidden @ self.fc2_weight.T


@dataclass(frozen=True)
class OracleConfig:
    """Coefficients (spec §5 names in comments); they only weigh ``aux_loss``."""

    gate_norm: str = "sum"  # "sum": w = s / sum_winners s; "sigmoid": sigmoid(s) instead
    router_theta: float = 0.1  # alpha, winners term of L_D
    router_loss_coef: float = 0.01  # beta
    diversity_coef: float = 0.005  # gamma
    balance_coef: float = 0.01  # router-step Switch loss
    competition_balance_coef: float = 0.01
    diversity_average: str = "matrix"  # "matrix" (authors) or "pairs"
    balance_count: str = "top1"  # "top1" (authors) or "all"
    z_loss_coef: float = 0.0  # 0: no z-loss
    # Top-M candidates (0: all E): only the router's top-M experts (by logit) of a token
    # compete; the others get affinity -inf (never win; softmax weight 0 in L_D and balance).
    candidates: int = 0
    # Gradient through the winners only: the competition balance loss's softmax sees the
    # losers' affinities as constants (the project's `gradient: winners`; the spec's dense
    # autograd lets it reach the losers).
    balance_losers_detached: bool = False


# ---- spec §1: selection and gates -------------------------------------------------------

def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[T, E] bool, True on each row's k largest scores (rank by a stable descending sort)."""
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for row in range(scores.shape[0]):
        mask[row, order[row, :k]] = True
    return mask


def router_gates(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router step: p = softmax(logits), I_R = TopK(p), w_i = p_i / sum_{j in I_R} p_j."""
    p = torch.softmax(_wide(router_logits), dim=-1)
    chosen = top_k_mask(p, k)
    kept = torch.where(chosen, p, torch.zeros_like(p))
    return kept / kept.sum(dim=-1, keepdim=True), chosen


def neural_response(expert_outputs: torch.Tensor) -> torch.Tensor:
    """s_i(x) = mean over the D output features of softplus(g_i(x)); [T, E, D] -> [T, E]."""
    out = _wide(expert_outputs)
    softplus = torch.log1p(torch.exp(-out.abs())) + out.clamp(min=0)  # stable log(1 + e^x)
    return softplus.sum(dim=-1) / out.shape[-1]


def competition_gates(affinity: torch.Tensor, k: int, norm: str = "sum"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """I_C = TopK(s); w_i = s_i / sum_{j in I_C} s_j (or sigmoid(s) in place of s), zero off
    the winners. Not detached: the task loss trains the experts through their affinities."""
    winners = top_k_mask(affinity, k)
    score = torch.sigmoid(affinity) if norm == "sigmoid" else affinity
    if norm not in ("sum", "sigmoid"):
        raise ValueError(norm)
    kept = torch.where(winners, score, torch.zeros_like(score))
    return kept / kept.sum(dim=-1, keepdim=True), winners


# ---- spec §2-§3: losses -------------------------------------------------------------------

def distillation_loss(router_logits, affinity, winners, k, alpha):
    """L_D = MSE(s^R, s^C) + alpha * mean_t (1/K) sum_{j in I_C} (s^C_j - s^R_j)^2, with
    s^R = softmax(logits), s^C = softmax(s) detached (a target)."""
    s_r = torch.softmax(_wide(router_logits), dim=-1)
    s_c = torch.softmax(_wide(affinity).detach(), dim=-1)
    sq = (s_c - s_r) ** 2
    mse = sq.sum() / sq.numel()
    per_token_winners = torch.where(winners, sq, torch.zeros_like(sq)).sum(dim=-1) / k
    return mse + alpha * per_token_winners.mean()


def diversity_loss(winner_outputs: torch.Tensor, average: str = "matrix") -> torch.Tensor:
    """cos(g_i(x), g_j(x)) among the K winners, averaged over tokens; [T, K, D]; K=1: 0.
    "matrix": sum over ordered pairs i != j divided by K*K; "pairs": mean over i < j."""
    out = _wide(winner_outputs)
    k = out.shape[1]
    if k < 2:
        return out.sum() * 0.0
    total = 0.0
    for i in range(k):
        for j in range(k):
            if i != j:
                total = total + F.cosine_similarity(out[:, i], out[:, j], dim=-1, eps=1e-12)
    divisor = k * k if average == "matrix" else k * (k - 1)
    return (total / divisor).mean()


def top1_assignment(scores: torch.Tensor) -> torch.Tensor:
    """[T, E] bool, True on each row's largest score (its top-1 winner)."""
    return top_k_mask(scores, 1)


def switch_balance(probs: torch.Tensor, assigned: torch.Tensor, k: int) -> torch.Tensor:
    """E * sum_e f_e * P_e; f_e = share of the T*K token slots given to e (a count, no
    gradient), P_e = mean over tokens of probs[:, e]."""
    tokens, experts = probs.shape
    f = assigned.to(probs.dtype).sum(dim=0).detach() / (tokens * k)
    return experts * (f * _wide(probs).mean(dim=0)).sum()


def z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(_wide(router_logits), dim=-1).pow(2).mean()


# ---- one layer ----------------------------------------------------------------------------

def oracle_moe_forward(x, router_weight, experts: Sequence[Expert], top_k: int, compete: bool,
                       cfg: OracleConfig = OracleConfig()) -> dict:
    """One MoE layer on tokens x [T, H], router_weight [E, H]. Every expert runs on every
    token; unchosen experts get weight 0 (so no gradient), as if they had not run.

    Returns dict(output [T, H_out], router_logits, affinity ([T, E]; None on router steps),
    gates [T, E], winners_mask [T, E] bool, losses {name: unweighted scalar}, aux_loss).
    """
    router_logits = x @ router_weight.T
    outs = torch.stack([expert(x) for expert in experts], dim=1)  # [T, E, D]
    if not compete:
        gates, chosen = router_gates(router_logits, top_k)
        probs = torch.softmax(_wide(router_logits), dim=-1)
        losses = {"balance": switch_balance(probs, chosen, top_k)}
        aux = cfg.balance_coef * losses["balance"]
        if cfg.z_loss_coef > 0:
            losses["z_loss"] = z_loss(router_logits)
            aux = aux + cfg.z_loss_coef * losses["z_loss"]
        affinity = None
    else:
        # The router is evaluated but does not route: its only gradient is L_D's.
        affinity = neural_response(outs)
        if cfg.candidates and cfg.candidates < affinity.shape[-1]:
            candidate = top_k_mask(router_logits, cfg.candidates)
            affinity = torch.where(candidate, affinity, torch.full_like(affinity, -torch.inf))
        gates, chosen = competition_gates(affinity, top_k, cfg.gate_norm)
        balance_affinity = affinity
        if cfg.balance_losers_detached:
            balance_affinity = torch.where(chosen, affinity, affinity.detach())
        winner_outs = torch.stack([outs[t][chosen[t]] for t in range(outs.shape[0])])
        losses = {
            "distillation": distillation_loss(router_logits, affinity, chosen, top_k,
                                              cfg.router_theta),
            "diversity": diversity_loss(winner_outs, cfg.diversity_average),
            "competition_balance": (
                switch_balance(torch.softmax(balance_affinity, dim=-1),
                               top1_assignment(affinity), 1)
                if cfg.balance_count == "top1"
                else switch_balance(torch.softmax(balance_affinity, dim=-1), chosen, top_k)),
        }
        aux = (cfg.router_loss_coef * losses["distillation"]
               + cfg.diversity_coef * losses["diversity"]
               + cfg.competition_balance_coef * losses["competition_balance"])
    output = (gates.unsqueeze(-1).to(outs.dtype) * outs).sum(dim=1)
    return dict(output=output, router_logits=router_logits, affinity=affinity, gates=gates,
                winners_mask=chosen, losses=losses, aux_loss=aux)
