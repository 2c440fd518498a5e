"""The CompeteSMoE router: megatron-core's TopKRouter, unchanged on router steps.

Router steps are exactly megatron's top-K path (bias-free linear, softmax, top-K renormalised
over the winners, switch balance loss with moe_aux_loss_coeff, optional z-loss), so they cost
what MoELayer costs. This subclass only
  * refuses router options CompeteSMoE does not define (spec §1 fixes softmax top-K),
  * reports the routing map of router steps to the layer (expert-load metrics),
  * exposes the plain logits for competition steps, where the router is evaluated but does not
    route: it is trained by the distillation loss alone (spec §2).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from megatron.core.transformer.moe.router import TopKRouter


def check_router_config(config) -> None:
    """Raise if the TransformerConfig asks for a router CompeteSMoE does not define."""
    problems = []
    if config.moe_router_score_function != "softmax":
        problems.append("moe_router_score_function must be 'softmax'")
    if config.moe_router_pre_softmax:
        problems.append("moe_router_pre_softmax must be False (weights renormalised over top-K)")
    if config.moe_router_num_groups or config.moe_router_group_topk:
        problems.append("group-limited routing is not part of CompeteSMoE")
    if config.moe_router_topk_scaling_factor not in (None, 1.0):
        problems.append("moe_router_topk_scaling_factor must be None")
    if config.moe_router_enable_expert_bias:
        problems.append("aux-loss-free expert bias is not part of CompeteSMoE")
    if config.add_bias_linear:
        problems.append("the router must be bias-free (add_bias_linear=False)")
    if config.moe_router_load_balancing_type not in ("aux_loss", "none"):
        problems.append("moe_router_load_balancing_type must be 'aux_loss' or 'none'")
    if config.moe_router_force_load_balancing or config.moe_enable_routing_replay:
        problems.append("forced/replayed routing is not supported")
    if problems:
        raise ValueError("CompeteSMoE router: " + "; ".join(problems))


class CompeteSMoERouter(TopKRouter):
    def __init__(self, config, pg_collection=None) -> None:
        check_router_config(config)
        super().__init__(config=config, pg_collection=pg_collection)
        # Set by the layer: receives the routing map of each training router step.
        self.routing_map_observer: Optional[Callable[[torch.Tensor], None]] = None

    def routing(self, logits: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        probs, routing_map = super().routing(logits, padding_mask=padding_mask)
        if self.routing_map_observer is not None and self.training:
            counted = routing_map
            if padding_mask is not None:  # [S, B], True = padding: routed, but not counted
                counted = routing_map & ~padding_mask.reshape(-1, 1)
            self.routing_map_observer(counted)
        return probs, routing_map

    def competition_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Router logits [tokens, E] in the router dtype (no jitter, no routing, no aux loss)."""
        return self.gating(hidden_states).view(-1, self.config.num_moe_experts)
