"""Dense single-process reference of one CompeteSMoE MoE layer (spec §1-§3).

Written for clarity, not speed; tests compare the megatron-core layer against it.
Weights use torch.nn.Linear layout ([out, in]), no biases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from csmoe_megatron.moe.affinity import GateNorm, gates_from_affinity, neural_response
from csmoe_megatron.moe.losses import (
    competition_balance_loss,
    diversity_loss,
    router_distillation_loss,
    switch_balance_loss,
    z_loss,
)
from csmoe_megatron.moe.numerics import at_least_fp32

Expert = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MLPExpert:
    """Megatron-style expert g(x) = fc2(act(fc1 x)).

    fc1_weight: [F, H], or [2F, H] with gated_linear_unit (megatron's GLU: the fc1 output is
    split in halves (a, b) and act(a) * b is fed to fc2). fc2_weight: [H_out, F].
    """

    fc1_weight: torch.Tensor
    fc2_weight: torch.Tensor
    activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu
    gated_linear_unit: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(x, self.fc1_weight)
        if self.gated_linear_unit:
            gate, linear = torch.chunk(hidden, 2, dim=-1)
            hidden = self.activation(gate) * linear
        else:
            hidden = self.activation(hidden)
        return F.linear(hidden, self.fc2_weight)


@dataclass(frozen=True)
class ReferenceConfig:
    """Options of the reference layer; loss coefficients only feed ``aux_loss``."""

    gate_norm: GateNorm = "sum"
    router_theta: float = 0.1  # alpha, winners term of L_D
    router_loss_coef: float = 0.01  # beta
    diversity_coef: float = 0.005  # gamma
    balance_coef: float = 0.01  # router-step switch loss
    competition_balance_coef: float = 0.01
    z_loss_coef: float = 0.0  # 0 disables the z-loss


def reference_moe_forward(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    experts: Sequence[Expert],
    top_k: int,
    compete: bool,
    cfg: ReferenceConfig = ReferenceConfig(),
) -> dict:
    """One MoE layer on tokens x [T, H] with router_weight [E, H].

    Returns dict(output [T, H_out], router_logits [T, E], affinity [T, E] or None on router
    steps, gates [T, E] (zero off the chosen experts), winners_mask [T, E] bool (the experts
    actually used), losses {name: unweighted scalar}, aux_loss (coefficient-weighted sum)).
    """
    router_logits = F.linear(x, router_weight)
    if compete:
        return _competition_step(x, router_logits, experts, top_k, cfg)
    return _router_step(x, router_logits, experts, top_k, cfg)


def _router_step(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    experts: Sequence[Expert],
    top_k: int,
    cfg: ReferenceConfig,
) -> dict:
    """Spec §1 router step: softmax top-K, weights renormalised over the chosen experts."""
    probs = torch.softmax(at_least_fp32(router_logits), dim=-1)
    top_logits, topk_idx = torch.topk(at_least_fp32(router_logits), top_k, dim=-1)
    top_weights = torch.softmax(top_logits, dim=-1)  # == p_i / sum_{j in I_R} p_j
    gates = torch.zeros_like(probs).scatter(-1, topk_idx, top_weights)
    routing_map = gates.new_zeros(gates.shape, dtype=torch.bool).scatter(-1, topk_idx, True)

    # Sparse: each expert runs only on its own tokens.
    output = None
    for expert_id, expert in enumerate(experts):
        tokens = routing_map[:, expert_id].nonzero(as_tuple=True)[0]
        expert_out = expert(x[tokens])
        if output is None:
            output = expert_out.new_zeros(x.shape[0], expert_out.shape[-1])
        weight = gates[tokens, expert_id].unsqueeze(-1).to(expert_out.dtype)
        output = output.index_add(0, tokens, weight * expert_out)

    losses = {"balance": switch_balance_loss(probs, routing_map, top_k)}
    aux_loss = cfg.balance_coef * losses["balance"]
    if cfg.z_loss_coef > 0:
        losses["z_loss"] = z_loss(router_logits)
        aux_loss = aux_loss + cfg.z_loss_coef * losses["z_loss"]
    return dict(
        output=output,
        router_logits=router_logits,
        affinity=None,
        gates=gates,
        winners_mask=routing_map,
        losses=losses,
        aux_loss=aux_loss,
    )


def _competition_step(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    experts: Sequence[Expert],
    top_k: int,
    cfg: ReferenceConfig,
) -> dict:
    """Spec §1 competition step: every expert on every token, winners by neural response;
    the router only receives the distillation loss (spec §2)."""
    expert_outs = torch.stack([expert(x) for expert in experts], dim=1)  # [T, E, D]
    affinity = neural_response(expert_outs)
    gates, winners_mask, topk_idx = gates_from_affinity(affinity, top_k, cfg.gate_norm)
    output = (gates.unsqueeze(-1).to(expert_outs.dtype) * expert_outs).sum(dim=1)

    index = topk_idx.unsqueeze(-1).expand(-1, -1, expert_outs.shape[-1])
    winner_outs = torch.gather(expert_outs, 1, index)  # [T, K, D]
    losses = {
        "distillation": router_distillation_loss(
            router_logits, affinity, winners_mask, top_k, cfg.router_theta
        ),
        "diversity": diversity_loss(winner_outs),
        "competition_balance": competition_balance_loss(affinity, winners_mask, top_k),
    }
    aux_loss = (
        cfg.router_loss_coef * losses["distillation"]
        + cfg.diversity_coef * losses["diversity"]
        + cfg.competition_balance_coef * losses["competition_balance"]
    )
    return dict(
        output=output,
        router_logits=router_logits,
        affinity=affinity,
        gates=gates,
        winners_mask=winners_mask,
        losses=losses,
        aux_loss=aux_loss,
    )
