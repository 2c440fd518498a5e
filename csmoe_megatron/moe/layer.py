"""CompeteSMoELayer: megatron-core's MoELayer with scheduled competition steps (spec §1-§3).

* Router steps (most training steps, all of evaluation): MoELayer.forward unchanged, with the
  CompeteSMoERouter (megatron's TopKRouter plus a routing-map observer for load metrics).
* Competition steps (training only, when context.competes says so for this layer's global MoE
  index). gradient "winners" with combine "winners" (the default, both dispatchers;
  winners_only*.py): each token reaches each expert rank once, every candidate expert scores
  it without a graph, and only the winners run again with gradient and come back.
  gradient "dense": every expert runs on every token through the normal dispatcher in dense
  mode; combine "winners" (alltoall): the expert ranks score their rows and only the
  affinities and then the K winners' outputs come back (winners_combine.py); combine "full"
  (and always with allgather): all E x H outputs come back to the source rank (dispatch.py)
  and are scored there. Winners, gates, the output and the losses are then computed on the
  source rank. The router only gets the distillation loss. With gradient "winners" the
  balance loss sees the losers' affinities as constants on every path (see winners_only.py).

Losses are attached to the layer output with MoEAuxLossAutoScaler, so they are scaled like
megatron's own aux loss (the schedule sets its scale to the main loss's 1/num_microbatches;
DDP averages over DP). Per-token means are divided by the TP x CP size, as megatron does for
its z-loss: with sequence/context parallelism each TP/CP rank holds a shard of the tokens and
the shards' losses add up to the mean over the whole micro-batch. The competition balance loss
uses megatron's switch loss with expert counts all-reduced over TP x CP, as its router does.
All three are logged per layer through save_to_aux_losses_tracker (unweighted, like megatron
logs load_balancing_loss): competesmoe_distillation_loss, competesmoe_diversity_loss,
competesmoe_balance_loss.

Configuration: the CompeteSMoEConfig arrives as the `competesmoe` ModuleSpec param (see
model/spec.py); defaults apply when a layer is built without it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from megatron.core.transformer.moe.moe_layer import MoELayer, MoESubmodules
from megatron.core.transformer.moe.moe_utils import (
    MoEAuxLossAutoScaler,
    get_default_pg_collection,
    save_to_aux_losses_tracker,
    switch_load_balancing_loss_func,
)
from megatron.core.transformer.moe.router import TopKRouter
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

from ..config.schema import CompeteSMoEConfig
from ..device import current_device
from . import context, metrics, winners_combine, winners_only_allgather, winners_only_alltoall
from .affinity import gates_from_affinity, neural_response
from .dispatch import CompetitionAlltoAllDispatcher, build_dispatcher, unit_routing
from .losses import (competition_balance_counts, diversity_loss, router_distillation_loss,
                     routing_agreement)
from .router import CompeteSMoERouter
from .winners_only import candidate_mask

class _SubclassKwargsNotice(logging.Filter):
    """TransformerLayer warns "Unknown MLP type ... Using default kwargs" for any MLP module
    that is not exactly one of its own; CompeteSMoELayer builds the pg_collection it would have
    passed itself (see __init__), so the warning says nothing true about our layer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Unknown MLP type" not in record.getMessage()


logging.getLogger("megatron.core.transformer.transformer_layer").addFilter(_SubclassKwargsNotice())

LOSS_NAMES = ("competesmoe_distillation_loss", "competesmoe_diversity_loss",
              "competesmoe_balance_loss")


def check_layer_config(config, cs: CompeteSMoEConfig) -> None:
    problems = []
    if config.moe_shared_expert_intermediate_size is not None:
        problems.append("shared experts are not supported on competition steps")
    if config.moe_latent_size:
        problems.append("MoE latent projections are not supported on competition steps")
    if config.moe_token_dispatcher_type not in ("alltoall", "allgather"):
        problems.append(f"dispatcher {config.moe_token_dispatcher_type!r} (use alltoall or "
                        "allgather)")
    if cs.gate_norm not in ("sum", "sigmoid"):
        problems.append(f"gate_norm must be 'sum' or 'sigmoid', got {cs.gate_norm!r}")
    if cs.token_chunk < 0:
        problems.append("token_chunk must be >= 0")
    if cs.combine not in ("winners", "full"):
        problems.append(f"combine must be 'winners' or 'full', got {cs.combine!r}")
    if cs.gradient not in ("winners", "dense"):
        problems.append(f"gradient must be 'winners' or 'dense', got {cs.gradient!r}")
    num_experts = config.num_moe_experts
    if cs.candidates and not config.moe_router_topk <= cs.candidates <= num_experts:
        problems.append(f"candidates must be 0 (all experts) or between top_k "
                        f"({config.moe_router_topk}) and num_experts ({num_experts}), got "
                        f"{cs.candidates}")
    elif cs.candidates not in (0, num_experts) and (cs.gradient, cs.combine) != ("winners",
                                                                                 "winners"):
        problems.append("candidates < num_experts needs gradient 'winners' and combine "
                        "'winners'")
    if problems:
        raise ValueError("CompeteSMoELayer: " + "; ".join(problems))


class CompeteSMoELayer(MoELayer):
    def __init__(self, config, submodules: Optional[MoESubmodules] = None,
                 layer_number: Optional[int] = None, pg_collection=None,
                 competesmoe: Optional[CompeteSMoEConfig] = None):
        cs = competesmoe if competesmoe is not None else CompeteSMoEConfig()
        check_layer_config(config, cs)
        if pg_collection is None:
            # TransformerLayer passes pg_collection only when the spec's module *is* MoELayer
            # (an equality test, not isinstance), so a subclass arrives without one. Build the
            # same collection megatron would from parallel_state, explicitly, so the router,
            # dispatcher and experts use the EP/TP/expert-TP groups the model was set up with.
            pg_collection = get_default_pg_collection()
        if submodules.router is TopKRouter:
            submodules = dataclasses.replace(submodules, router=CompeteSMoERouter)
        elif not issubclass(submodules.router, CompeteSMoERouter):
            raise ValueError("CompeteSMoELayer needs a CompeteSMoERouter")
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         pg_collection=pg_collection)
        self.competesmoe = cs
        self.moe_pg_collection = pg_collection
        # MoELayer builds its dispatcher from the config name; replace it by the same class
        # with a dense (competition) mode.
        self.token_dispatcher = build_dispatcher(self.num_local_experts,
                                                 self.local_expert_indices, self.config,
                                                 pg_collection)
        self.router.routing_map_observer = self._observe_router_step
        self.moe_layer_index: Optional[int] = None
        if layer_number is not None:
            self.set_layer_number(layer_number)

    def set_layer_number(self, layer_number: int):
        super().set_layer_number(layer_number)
        self.moe_layer_index = context.moe_layer_index(self.config, layer_number)
        self._register_loss_trackers()

    def _register_loss_trackers(self) -> None:
        # Megatron's tracker reduction runs one collective per name present on each rank, so
        # every rank must hold the same names. Ours appear only on competition steps and the
        # router's own only on router steps: a pipeline stage whose layers all compete on the
        # first step would otherwise lack "load_balancing_loss" and hang the reduction. Create
        # them all up front, with the groups megatron's router uses for its own. On the device
        # the losses will be computed on (the router weight is still on the host at build time).
        zero = torch.zeros((), device=current_device())
        layers = self._tracker_layers()
        for name in LOSS_NAMES:
            save_to_aux_losses_tracker(name, zero, self.layer_number, layers,
                                       reduce_group=self.moe_pg_collection.tp_cp)
        if self.router.get_aux_loss_coeff("aux_loss") != 0:
            save_to_aux_losses_tracker("load_balancing_loss", zero, self.layer_number, layers,
                                       reduce_group=self.router.tp_cp_group)
        if self.config.moe_z_loss_coeff is not None:
            save_to_aux_losses_tracker("z_loss", zero, self.layer_number, layers)

    def _tracker_layers(self) -> int:
        return self.config.num_layers + (self.config.mtp_num_layers or 0)

    def competes_now(self) -> bool:
        if not self.training or self.moe_layer_index is None:
            return False
        return context.competes(self.moe_layer_index, self.competesmoe)

    def forward(self, hidden_states: torch.Tensor, intermediate_tensors=None,
                padding_mask: Optional[torch.Tensor] = None):
        if intermediate_tensors is None and self.competes_now():
            return self.competition_forward(hidden_states, padding_mask)
        return super().forward(hidden_states, intermediate_tensors, padding_mask)

    def _observe_router_step(self, routing_map: torch.Tensor) -> None:
        if self.moe_layer_index is not None:
            metrics.record_router_step(self.moe_layer_index, routing_map)

    # ---- competition step -------------------------------------------------------------

    def dense_expert_outputs(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """g_i(x) for every (token, expert): [T, E, H], through megatron's dispatcher."""
        num_tokens = hidden_states.numel() // hidden_states.shape[-1]
        probs, routing_map = unit_routing(num_tokens, self.config.num_moe_experts,
                                          self.router.weight)
        dispatcher = self.token_dispatcher
        with dispatcher.dense_mode():
            tokens, probs = dispatcher.dispatch_preprocess(hidden_states, routing_map, probs)
            tokens, probs = dispatcher.token_dispatch(tokens, probs)
            output, _ = self.routed_experts_compute(tokens, probs)
            output = dispatcher.token_combine(output)
            return dispatcher.combine_postprocess(output)

    def competition_forward(self, hidden_states: torch.Tensor,
                            padding_mask: Optional[torch.Tensor] = None):
        if self.attn_tp_group.size() > 1 and not self.config.sequence_parallel:
            raise ValueError("MoE with tensor parallelism needs sequence parallelism in training")
        top_k, cs = self.config.moe_router_topk, self.competesmoe
        logits = self.router.competition_logits(hidden_states)  # [T, E]
        if self.scores_without_graph():
            compete = (winners_only_alltoall.compete
                       if isinstance(self.token_dispatcher, CompetitionAlltoAllDispatcher)
                       else winners_only_allgather.compete)
            affinity, winners_mask, winner_outs, top_gates = compete(
                self.token_dispatcher, self.experts, hidden_states,
                candidate_mask(logits, cs.candidates), top_k, cs.gate_norm, cs.token_chunk,
                self.router.weight.dtype)
        elif self.combines_winners_only():
            affinity, winners_mask, winner_outs, top_gates = winners_combine.compete(
                self.token_dispatcher, self.routed_experts_compute, hidden_states,
                self.router.weight, top_k, cs.gate_norm, cs.token_chunk)
        else:
            affinity, winners_mask, winner_outs, top_gates = self._full_combine(hidden_states)
        if cs.gradient == "winners" and not self.scores_without_graph():
            # Same function as the winners-only path: the losers' affinities are constants.
            affinity = torch.where(winners_mask, affinity, affinity.detach())
        top_gates = top_gates.to(winner_outs.dtype)
        output = (top_gates.unsqueeze(-1) * winner_outs).sum(dim=1)  # [T, H]

        valid = None
        if padding_mask is not None:  # [B, S], True = padding (megatron's router convention)
            valid = ~padding_mask.transpose(0, 1).reshape(-1).bool()
        if torch.is_grad_enabled():
            output = self._attach_losses(output, logits, affinity, winners_mask, winner_outs,
                                         valid)
        keep = slice(None) if valid is None else valid
        metrics.record_competition_step(
            self.moe_layer_index, winners_mask[keep], affinity[keep],
            routing_agreement(logits[keep], winners_mask[keep], top_k))
        return output.view(hidden_states.shape).to(hidden_states.dtype), None

    def scores_without_graph(self) -> bool:
        """gradient == "winners" with combine "winners": the winners-only step (winners_only.py),
        on either dispatcher."""
        return self.competesmoe.gradient == "winners" and self.competesmoe.combine == "winners"

    def combines_winners_only(self) -> bool:
        """The dense-gradient step's combine (gradient "dense"): combine == "winners" on the
        alltoall dispatcher; allgather keeps the full path (its combine is one reduce-scatter of
        [T, E*H], with no per-row split to cut down)."""
        return (self.competesmoe.combine == "winners"
                and isinstance(self.token_dispatcher, CompetitionAlltoAllDispatcher))

    def _full_combine(self, hidden_states: torch.Tensor):
        """combine == "full": all E outputs come back, scored on the source rank."""
        pairs = self.dense_expert_outputs(hidden_states)  # [T, E, H]
        affinity = self._affinity(pairs)  # [T, E], >= fp32
        gates, winners_mask, topk_idx = gates_from_affinity(
            affinity, self.config.moe_router_topk, self.competesmoe.gate_norm)
        hidden = pairs.shape[-1]
        winner_outs = torch.gather(pairs, 1, topk_idx.unsqueeze(-1).expand(-1, -1, hidden))
        return affinity, winners_mask, winner_outs, torch.gather(gates, 1, topk_idx)

    def _affinity(self, pairs: torch.Tensor) -> torch.Tensor:
        """neural_response in token chunks when token_chunk > 0: softplus materialises a
        >=fp32 copy of [T, E, H]; chunking bounds that transient to [chunk, E, H]."""
        chunk = self.competesmoe.token_chunk
        if chunk <= 0 or chunk >= pairs.shape[0]:
            return neural_response(pairs)
        return torch.cat([neural_response(part) for part in pairs.split(chunk)])

    def _attach_losses(self, output, logits, affinity, winners_mask, winner_outs, valid):
        cs, top_k, num_experts = self.competesmoe, self.config.moe_router_topk, \
            self.config.num_moe_experts
        tp_cp = self.moe_pg_collection.tp_cp
        shards = tp_cp.size()
        if valid is not None:
            logits, affinity = logits[valid], affinity[valid]
            winners_mask, winner_outs = winners_mask[valid], winner_outs[valid]
        local_tokens = logits.shape[0]
        distillation = router_distillation_loss(logits, affinity, winners_mask, top_k,
                                                cs.router_theta) / shards
        diversity = diversity_loss(winner_outs, cs.diversity_average) / shards
        with torch.no_grad():  # f_e: each token's top-1 winner (authors) or all K slots
            local_counts, slots = competition_balance_counts(affinity, winners_mask, top_k,
                                                             cs.balance_count)
            global_counts = reduce_from_tensor_model_parallel_region(local_counts, tp_cp)
            total_tokens = global_counts.sum() / slots
        balance = switch_load_balancing_loss_func(
            probs=torch.softmax(affinity, dim=-1), tokens_per_expert=global_counts,
            total_num_tokens=total_tokens, topk=slots, num_experts=num_experts,
            moe_aux_loss_coeff=1.0)
        for name, value in zip(LOSS_NAMES, (distillation, diversity, balance)):
            save_to_aux_losses_tracker(name, value, self.layer_number, self._tracker_layers(),
                                       reduce_group=tp_cp)
        aux = (cs.router_loss_coef * distillation + cs.diversity_coef * diversity
               + cs.balance_coef * balance)
        if self.config.calculate_per_token_loss:
            aux = aux * local_tokens  # as megatron's router: finalize_model_grads divides
        return MoEAuxLossAutoScaler.apply(output, aux)
