"""The plan of a run, from the config alone (`csmoe-train --check`): layout, parameters, tokens
and FLOPs a step, and an estimate of each GPU's memory. No process group, no GPU, no files.

Memory estimate, per GPU of the busiest pipeline stage (the first: it holds the input
embedding and the most micro-batches in flight). Element sizes: b = 2 bytes (bf16) or 4 (fp32).

* params: dense = (non-expert params without embeddings) / (TP * PP) + embedding V*H / TP
  (both embedding matrices when PP = 1 and untied); experts = all expert params /
  (EP * ETP * PP). Bytes: b per parameter. Norms are left out; the small router weights are
  counted as if TP-split.
* grads: 4 bytes per parameter (megatron DDP accumulates main_grad in fp32).
* optimizer state: Adam's two moments in fp32 (8 bytes) plus, in bf16, the fp32 master copy
  (4 bytes): 12 bytes (bf16) or 8 (fp32) per parameter; with the distributed optimizer divided
  by the data-parallel size (DP for dense params, expert-DP = world / (ETP * EP * PP) for
  experts).
* activations kept for the backward, per micro-batch, T = micro_batch * seq_length / TP tokens
  (sequence parallelism splits the rest by TP; megatron MoE with TP > 1 requires it), per
  layer of the stage, elements per token:
    attention: 4H + 2*KV (norm input, qkv input, q/k/v, context) + A*S (the softmax scores of
               the unfused attention; fused attention keeps none, so this is an upper bound)
    dense MLP: 2H + 3F (SwiGLU: fc1 in, two fc1 halves, activation) or 2H + 2F (GeLU)
    MoE layer, router step: 2H + 2E fp32 router values + K expert rows of 2H + 3F_e (in,
               fc1 out, activation, out; 2H + 2F_e with GeLU)
    MoE layer, competition step (the dense competition path): every expert's output kept,
               E expert rows instead of K (with EP, a GPU's E/EP experts see all EP ranks'
               tokens: T*E rows per GPU), plus E fp32 affinities and the combined outputs
               brought back (combine full: E*H; winners: K*H).
  plus the output logits in fp32 (4 * V / TP per token). Micro-batches in flight: 1 without
  pipelining, min(PP, micro-batches) with 1F1B (interleaving holds a little more; not
  counted). A competition step has min(A_max, MoE layers of the stage) competing layers.
* FLOPs a step: train/flops.py's model FLOPs per token (6 x multiplying active params +
  attention) times tokens a step; a competition step adds forward and backward of the E - K
  other experts in each competing layer (6 * (E - K) * expert params per token; an upper
  bound, as their backward carries gradient only through the competition losses).
"""

from __future__ import annotations

from ..config.inputs import tokenizer_vocab_size
from ..config.schema import ExperimentConfig
from ..config.validate import total_steps
from .flops import flops_per_token, parameter_counts

GIB = 2**30


def padded_vocab(cfg: ExperimentConfig) -> int:
    """model.vocab_size, or the tokenizer's padded as model.build.padded_vocab_size pads it
    (imported from there it would pull megatron-core into a check that needs none of it)."""
    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor
    return -(-tokenizer_vocab_size(cfg) // multiple) * multiple


def build_plan(cfg: ExperimentConfig, world_size: int) -> dict:
    """Every number `--check` prints, for a validated config on `world_size` ranks."""
    m, moe, p, t = cfg.model, cfg.model.moe, cfg.parallel, cfg.train
    vocab = padded_vocab(cfg)
    etp, vpp = p.expert_tensor or p.tensor, p.virtual_pipeline
    dp = world_size // (p.tensor * p.pipeline * p.context)
    expert_dp = world_size // (etp * p.expert * p.pipeline)
    micro = t.global_batch_size // (t.micro_batch_size * dp)
    total, active = parameter_counts(cfg, vocab)
    glu = 3 if m.activation == "swiglu" else 2
    per_expert = glu * m.hidden_size * moe.ffn_hidden_size
    experts = m.num_moe_layers * moe.num_experts * per_expert
    embedding = vocab * m.hidden_size
    embeddings = embedding * (2 if m.untie_embeddings else 1)
    dense_rest = total - experts - embeddings
    stage_embedding = embeddings if p.pipeline == 1 else embedding
    dense_gpu = dense_rest / (p.tensor * p.pipeline) + stage_embedding / p.tensor
    expert_gpu = experts / (p.expert * etp * p.pipeline)

    b = 2 if t.precision == "bf16" else 4
    optim_bytes = 12 if t.precision == "bf16" else 8
    dense_shards = dp if p.distributed_optimizer else 1
    expert_shards = expert_dp if p.distributed_optimizer else 1
    memory = {
        "params": (dense_gpu + expert_gpu) * b,
        "grads": (dense_gpu + expert_gpu) * 4,
        "optimizer": optim_bytes * (dense_gpu / dense_shards + expert_gpu / expert_shards),
    }
    router_act, compete_act = _activation_bytes(cfg, vocab, micro, b)
    memory["activations_router_step"] = router_act
    memory["activations_competition_step"] = compete_act

    tokens = t.global_batch_size * m.seq_length
    competing = min(moe.competesmoe.max_compete_per_step, m.num_moe_layers)
    if moe.router != "competesmoe":
        competing = 0
    router_flops = flops_per_token(cfg, vocab) * tokens
    extra = 6.0 * (moe.num_experts - moe.top_k) * per_expert * competing * tokens
    return {
        "layout": {"world_size": world_size, "tensor": p.tensor, "pipeline": p.pipeline,
                   "virtual_pipeline": vpp, "expert": p.expert, "expert_tensor": etp,
                   "context": p.context, "data_parallel": dp, "expert_data_parallel": expert_dp,
                   "micro_batches_per_step": micro},
        "vocab_size": vocab, "params_total": total, "params_active": active,
        "steps": total_steps(cfg), "tokens_per_step": tokens,
        "flops_router_step": router_flops, "flops_competition_step": router_flops + extra,
        "competing_layers": competing,
        "memory_per_gpu_bytes": memory,
    }


def _activation_bytes(cfg: ExperimentConfig, vocab: int, micro: int, b: int) -> tuple[float, float]:
    """(router step, competition step) activation bytes of the first stage (module docstring)."""
    m, moe, p = cfg.model, cfg.model.moe, cfg.parallel
    h, e, k = m.hidden_size, moe.num_experts, moe.top_k
    kv = (m.num_query_groups or m.num_attention_heads) * (h // m.num_attention_heads)
    glu_extra = 3 if m.activation == "swiglu" else 2
    row = 2 * h + glu_extra * moe.ffn_hidden_size  # one token in one expert
    attention = (4 * h + 2 * kv + m.num_attention_heads * m.seq_length) * b
    dense_mlp = (2 * h + glu_extra * m.ffn_hidden_size) * b
    moe_router = (2 * h + k * row) * b + 2 * e * 4
    combine_back = e * h if moe.competesmoe.combine == "full" or \
        moe.token_dispatcher == "allgather" else k * h
    moe_compete = moe_router + (e - k) * row * b + e * 4 + combine_back * b
    stage_layers = range(m.num_layers // p.pipeline)
    moe_on_stage = sum(1 for i in stage_layers if i % moe.layer_freq == 0)
    dense_on_stage = len(stage_layers) - moe_on_stage
    per_token = len(stage_layers) * attention + dense_on_stage * dense_mlp \
        + moe_on_stage * moe_router + 4 * vocab / p.tensor
    competing = min(moe.competesmoe.max_compete_per_step, moe_on_stage)
    if moe.router != "competesmoe":
        competing = 0
    tokens = cfg.train.micro_batch_size * m.seq_length / p.tensor
    in_flight = 1 if p.pipeline == 1 else min(p.pipeline, micro)
    router = per_token * tokens * in_flight
    return router, router + competing * (moe_compete - moe_router) * tokens * in_flight


def format_plan(plan: dict) -> str:
    """The plan as a short table for the console."""
    lay, mem = plan["layout"], plan["memory_per_gpu_bytes"]
    vpp = f" VPP={lay['virtual_pipeline']}" if lay["virtual_pipeline"] else ""
    lines = [
        f"layout: world size {lay['world_size']} = TP {lay['tensor']} x PP {lay['pipeline']} x "
        f"CP {lay['context']} x DP {lay['data_parallel']}{vpp}; experts: EP {lay['expert']} x "
        f"ETP {lay['expert_tensor']} x expert-DP {lay['expert_data_parallel']}; "
        f"{lay['micro_batches_per_step']} micro-batch(es) a step",
        f"parameters: {plan['params_total'] / 1e6:.2f}M total, {plan['params_active'] / 1e6:.2f}M "
        f"active per token (vocabulary {plan['vocab_size']})",
        f"steps: {plan['steps']}; tokens a step: {plan['tokens_per_step']:,}",
        f"FLOPs a step: {plan['flops_router_step']:.3e} (router step), "
        f"{plan['flops_competition_step']:.3e} (competition step, {plan['competing_layers']} "
        f"layer(s) compete; upper bound)",
        "memory per GPU (estimate; formulas: csmoe_megatron/train/plan.py):",
    ]
    static = mem["params"] + mem["grads"] + mem["optimizer"]
    for name in ("params", "grads", "optimizer"):
        lines.append(f"  {name:<32} {mem[name] / GIB:9.3f} GiB")
    for name, label in (("activations_router_step", "activations, router step"),
                        ("activations_competition_step", "activations, competition step")):
        lines.append(f"  {label:<32} {mem[name] / GIB:9.3f} GiB "
                     f"(total {(static + mem[name]) / GIB:.3f} GiB)")
    return "\n".join(lines)
