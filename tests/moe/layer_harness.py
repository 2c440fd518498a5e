"""Shared pieces of the CompeteSMoELayer tests: build a sharded layer, gather its weights
into the dense test oracle (tests/moe/dense_oracle.py), and compare outputs, losses and gradients.

Token layout: rank r holds its own tokens x_r [S, B, H] (its sequence-parallel shard or its
data-parallel batch). Megatron's objective is (1/DP) * sum over DP shards d of
(sum_t <out_t, G_t> + aux(d)), where the DP shard d is the tokens of one TP group and the aux
losses are means over it; DDP averages dense grads over DP and sums expert grads over their
expert-DP replicas with the same 1/DP scale. The reference computes that objective densely.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.transformer.moe.moe_utils import (
    clear_aux_losses_tracker,
    get_moe_layer_wise_logging_tracker,
    reduce_aux_losses_tracker_across_ranks,
)
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe import context
from csmoe_megatron.moe.layer import CompeteSMoELayer
from tests.moe.dense_oracle import MLPExpert, OracleConfig, oracle_moe_forward

SEQ, BATCH, HIDDEN, FFN, EXPERTS, TOP_K = 4, 2, 8, 6, 4, 2
ATOL, RTOL = 1e-5, 1e-5


def make_config(tensor=1, expert=1, expert_tensor=None, sequence_parallel=False,
                dispatcher="alltoall", glu=False, aux_loss_coeff=0.01, z_loss_coeff=None,
                capacity_factor=None, num_experts=EXPERTS, top_k=TOP_K, num_layers=2,
                moe_layer_freq=1, pipeline=1):
    return TransformerConfig(
        num_layers=num_layers, hidden_size=HIDDEN, num_attention_heads=2, ffn_hidden_size=16,
        moe_ffn_hidden_size=FFN, num_moe_experts=num_experts, moe_router_topk=top_k,
        moe_layer_freq=moe_layer_freq,
        tensor_model_parallel_size=tensor, expert_model_parallel_size=expert,
        expert_tensor_parallel_size=expert_tensor or tensor,
        pipeline_model_parallel_size=pipeline, sequence_parallel=sequence_parallel,
        add_bias_linear=False, gated_linear_unit=glu, activation_func=F.silu if glu else F.gelu,
        moe_router_load_balancing_type="aux_loss", moe_aux_loss_coeff=aux_loss_coeff,
        moe_z_loss_coeff=z_loss_coeff, moe_token_dispatcher_type=dispatcher,
        moe_expert_capacity_factor=capacity_factor, moe_router_dtype="fp32",
        moe_permute_fusion=False, bias_activation_fusion=False,
        gradient_accumulation_fusion=False, use_cpu_initialization=True,
        params_dtype=torch.float32, init_method_std=0.5)


def build_layer(config, cs: CompeteSMoEConfig | None = None, layer_number: int = 1):
    spec = get_moe_module_spec(use_te=False, num_experts=config.num_moe_experts)
    spec.module = CompeteSMoELayer
    spec.params = {"competesmoe": cs or CompeteSMoEConfig()}
    layer = build_module(spec, config=config)
    layer.set_layer_number(layer_number)
    return layer


@torch.no_grad()
def make_experts_distinct(layer, scale=0.5):
    """Give every expert its own weights. Each EP rank initialises its local experts from the
    same CPU generator, so expert e and expert e + E/EP start identical: their affinities tie
    and the test would depend on how top-K breaks ties. The offset is drawn from the expert's
    global index and expert-TP rank, so expert-DP replicas of a shard stay equal."""
    etp_rank = parallel_state.get_expert_tensor_parallel_rank()
    for local, expert in enumerate(layer.experts.local_experts):
        gen = torch.Generator().manual_seed(1000 + 10 * layer.local_expert_indices[local] + etp_rank)
        for weight in (expert.linear_fc1.weight, expert.linear_fc2.weight):
            weight.add_(scale * torch.randn(weight.shape, generator=gen).to(weight))


def _expert_shards(layer, grads: bool):
    """{(global expert, expert-TP rank): (fc1, fc2)} of this rank's local experts."""
    etp_rank = parallel_state.get_expert_tensor_parallel_rank()
    shards = {}
    for local, expert in enumerate(layer.experts.local_experts):
        gid = layer.local_expert_indices[local]
        fc1, fc2 = expert.linear_fc1.weight, expert.linear_fc2.weight
        if grads:
            fc1, fc2 = _grad(fc1), _grad(fc2)
        shards[(gid, etp_rank)] = (fc1.detach().clone(), fc2.detach().clone())
    return shards


def _grad(param):
    grad = getattr(param, "main_grad", None)
    return param.grad if grad is None else grad


def _all_shards(layer, grads: bool):
    """Every rank's shards; replicas (expert-DP) of one shard are summed."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, _expert_shards(layer, grads))
    merged = {}
    for shards in gathered:
        for key, (fc1, fc2) in shards.items():
            if key in merged and grads:
                merged[key] = (merged[key][0] + fc1, merged[key][1] + fc2)
            elif key not in merged:
                merged[key] = (fc1, fc2)
    return merged


def _assemble(shards, num_experts, glu):
    """Full [fc1, fc2] per expert from expert-TP shards (fc1 column-, fc2 row-split; with GLU
    each fc1 shard is [gate_shard; up_shard])."""
    experts = []
    for gid in range(num_experts):
        parts = [shards[key] for key in sorted(k for k in shards if k[0] == gid)]
        if glu:
            gates = [p[0].chunk(2, dim=0)[0] for p in parts]
            ups = [p[0].chunk(2, dim=0)[1] for p in parts]
            fc1 = torch.cat(gates + ups, dim=0)
        else:
            fc1 = torch.cat([p[0] for p in parts], dim=0)
        experts.append((fc1, torch.cat([p[1] for p in parts], dim=1)))
    return experts


def dp_layout():
    """(dp_size, {rank: dp shard index}) with a DP shard = the ranks of one TP group."""
    tp_group_ranks = dist.get_process_group_ranks(parallel_state.get_tensor_model_parallel_group())
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, min(tp_group_ranks))
    leaders = sorted(set(gathered))
    return len(leaders), {rank: leaders.index(lead) for rank, lead in enumerate(gathered)}


def global_tensors(world_size, seed=7):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(world_size, SEQ, BATCH, HIDDEN, generator=gen)
    upstream = torch.randn(world_size, SEQ, BATCH, HIDDEN, generator=gen)
    return x, upstream


def reference_config(config, cs: CompeteSMoEConfig) -> OracleConfig:
    return OracleConfig(gate_norm=cs.gate_norm, router_theta=cs.router_theta,
                           router_loss_coef=cs.router_loss_coef,
                           diversity_coef=cs.diversity_coef,
                           balance_coef=config.moe_aux_loss_coeff,
                           competition_balance_coef=cs.balance_coef,
                           diversity_average=cs.diversity_average,
                           balance_count=cs.balance_count,
                           z_loss_coef=config.moe_z_loss_coeff or 0.0,
                           candidates=cs.candidates,
                           balance_losers_detached=cs.gradient == "winners")


def run_reference(layer, config, cs, compete, x, upstream, dp_size, shard_of):
    """Reference objective (see module doc); returns per-rank outputs, grads and mean losses.

    Computed in float64 and returned in float32: the oracle's own rounding (its sums run in
    another order than the layer's) stays out of the comparison, which then measures the
    layer's float32 error alone."""
    glu = config.gated_linear_unit
    router_w = layer.router.weight.detach().double().requires_grad_(True)
    full = _assemble(_all_shards(layer, grads=False), config.num_moe_experts, glu)
    weights = [(w1.double().requires_grad_(True), w2.double().requires_grad_(True))
               for w1, w2 in full]
    experts = [MLPExpert(w1, w2, config.activation_func, glu) for w1, w2 in weights]
    x = x.double().requires_grad_(True)
    upstream = upstream.double()
    outputs, losses, objective = {}, {}, 0.0
    for shard in range(dp_size):
        ranks = [r for r, s in shard_of.items() if s == shard]
        tokens = torch.cat([x[r].reshape(-1, HIDDEN) for r in ranks])
        result = oracle_moe_forward(tokens, router_w, experts, config.moe_router_topk,
                                    compete, reference_config(config, cs))
        out = result["output"]
        grads_out = torch.cat([upstream[r].reshape(-1, HIDDEN) for r in ranks])
        objective = objective + ((out * grads_out).sum() + result["aux_loss"]) / dp_size
        for i, r in enumerate(ranks):
            n = SEQ * BATCH
            outputs[r] = out[i * n:(i + 1) * n].detach().float().view(SEQ, BATCH, HIDDEN)
        for name, value in result["losses"].items():
            losses[name] = losses.get(name, 0.0) + float(value) / dp_size
    objective.backward()
    return dict(outputs=outputs, losses=losses, router_grad=router_w.grad.float(),
                input_grad=x.grad.float(),
                expert_grads=[(w1.grad.float(), w2.grad.float()) for w1, w2 in weights])


def step(layer, x_local, upstream_local):
    """One forward-backward of the megatron layer; returns output and input grad."""
    hidden = x_local.clone().requires_grad_(True)
    out, bias = layer(hidden)
    assert bias is None
    out.backward(upstream_local)
    return out.detach(), hidden.grad


def tracked_losses(names):
    """megatron's aux-loss tracker after its own cross-rank reduction, layer 1."""
    reduce_aux_losses_tracker_across_ranks()
    tracker = get_moe_layer_wise_logging_tracker()
    values = {name: float(tracker[name]["values"][0]) for name in names if name in tracker}
    clear_aux_losses_tracker()
    return values


LOSS_NAMES_MAP = {"competesmoe_distillation_loss": "distillation",
                  "competesmoe_diversity_loss": "diversity",
                  "competesmoe_balance_loss": "competition_balance"}


def check_parity(config, cs: CompeteSMoEConfig, compete: bool, atol=ATOL, rtol=RTOL):
    """Build a layer, run one step (router or competition) and compare with the reference."""
    rank, world = dist.get_rank(), dist.get_world_size()
    layer = build_layer(config, cs)
    make_experts_distinct(layer)
    layer.train()
    dp_size, shard_of = dp_layout()
    x, upstream = global_tensors(world)
    ref = run_reference(layer, config, cs, compete, x, upstream, dp_size, shard_of)

    context.force_competition(compete)
    try:
        out, input_grad = step(layer, x[rank], upstream[rank])
    finally:
        context.force_competition(None)
    torch.testing.assert_close(out, ref["outputs"][rank], atol=atol, rtol=rtol)
    torch.testing.assert_close(input_grad, ref["input_grad"][rank] * dp_size, atol=atol,
                               rtol=rtol)

    router_grad = layer.router.weight.grad.detach().clone()
    dist.all_reduce(router_grad)
    torch.testing.assert_close(router_grad / dp_size, ref["router_grad"], atol=atol, rtol=rtol)

    grads = _assemble(_all_shards(layer, grads=True), config.num_moe_experts,
                      config.gated_linear_unit)
    for (g1, g2), (r1, r2) in zip(grads, ref["expert_grads"]):
        torch.testing.assert_close(g1 / dp_size, r1, atol=atol, rtol=rtol)
        torch.testing.assert_close(g2 / dp_size, r2, atol=atol, rtol=rtol)

    if compete:
        names = dict(LOSS_NAMES_MAP)
    else:
        names = {"load_balancing_loss": "balance"}
        if config.moe_z_loss_coeff:
            names["z_loss"] = "z_loss"
    logged = tracked_losses(list(names))
    for ours, theirs in names.items():
        if ours == "z_loss":
            continue  # megatron logs the z-loss of the logging rank only (no reduce group)
        assert abs(logged[ours] - ref["losses"][theirs]) <= 1e-5 * max(1.0, abs(logged[ours])), \
            (ours, logged[ours], ref["losses"][theirs])
    return layer
