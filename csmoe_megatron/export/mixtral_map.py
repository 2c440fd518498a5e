"""Our GPTModel's weights <-> transformers' Mixtral, name by name, both ways, exactly.

Our models (RoPE, RMSNorm, SwiGLU experts, GQA, no biases, softmax top-K router renormalised
over the K winners: the CompeteSMoE router at inference, and megatron's top-K router) are
Mixtral models. The one rearrangement is megatron's fused QKV projection, stored per query group
as [q heads of the group, k, v]; everything else is a rename:

  embedding.word_embeddings.weight              model.embed_tokens.weight
  decoder.layers.L.input_layernorm.weight       model.layers.L.input_layernorm.weight
  ...self_attention.linear_qkv.weight           ...self_attn.{q,k,v}_proj.weight
  ...self_attention.linear_proj.weight          ...self_attn.o_proj.weight
  ...pre_mlp_layernorm.weight                   ...post_attention_layernorm.weight
  ...mlp.router.weight                          ...block_sparse_moe.gate.weight
  ...mlp.experts.local_experts.E.linear_fc1     ...block_sparse_moe.experts.E.w1 (gate), w3 (up)
  ...mlp.experts.local_experts.E.linear_fc2     ...block_sparse_moe.experts.E.w2
  decoder.final_layernorm.weight                model.norm.weight
  output_layer.weight (untied only)             lm_head.weight

The Mixtral names are the per-expert layout of Mixtral checkpoints on disk, which every
transformers version (and vLLM) loads. The vocabulary stays padded as trained (config
vocab_size = the padded size), so logits compare one to one.
"""

from __future__ import annotations

import torch

from ..config.load import ConfigError
from ..config.schema import ExperimentConfig


def unsupported_features(cfg: ExperimentConfig, tconfig) -> list[str]:
    """What of this model Mixtral cannot express (empty: it exports exactly)."""
    m, moe = cfg.model, cfg.model.moe
    found = []
    if m.position_embedding_type != "rope":
        found.append(f"position embeddings {m.position_embedding_type!r} (Mixtral: rope)")
    if getattr(tconfig, "rotary_percent", 1.0) != 1.0:
        found.append("partial rotary embeddings (rotary_percent != 1)")
    if m.activation != "swiglu" or not tconfig.gated_linear_unit:
        found.append(f"{m.activation} experts (Mixtral: SwiGLU)")
    if m.normalization != "RMSNorm":
        found.append(f"{m.normalization} (Mixtral: RMSNorm)")
    if moe.layer_freq != 1:
        found.append(f"dense layers between MoE layers (model.moe.layer_freq={moe.layer_freq}; "
                     f"Mixtral: every layer MoE)")
    if moe.capacity_factor is not None:
        found.append("expert capacity / token dropping (Mixtral is dropless)")
    if tconfig.add_bias_linear or getattr(tconfig, "add_qkv_bias", False):
        found.append("linear biases")
    if getattr(tconfig, "qk_layernorm", False):
        found.append("qk-layernorm")
    if getattr(tconfig, "moe_shared_expert_intermediate_size", None):
        found.append("shared experts")
    if tconfig.moe_router_score_function != "softmax":
        found.append(f"router score function {tconfig.moe_router_score_function!r}")
    if tconfig.moe_router_pre_softmax or tconfig.moe_router_topk_scaling_factor not in (None, 1.0):
        found.append("router weights not renormalised softmax over the top-K")
    if getattr(tconfig, "moe_router_enable_expert_bias", False):
        found.append("router expert bias")
    if tconfig.num_moe_experts is None:
        found.append("no MoE layers")
    return found


def check_exportable(cfg: ExperimentConfig, tconfig) -> None:
    found = unsupported_features(cfg, tconfig)
    if found:
        raise ConfigError("this model cannot be written as a transformers Mixtral model: it has "
                          + "; ".join(found) + ". Only RoPE + RMSNorm + SwiGLU MoE models without "
                          "biases export")


def _qkv_sizes(cfg: ExperimentConfig) -> tuple[int, int, int]:
    m = cfg.model
    groups = m.num_query_groups or m.num_attention_heads
    return groups, m.num_attention_heads // groups, m.hidden_size // m.num_attention_heads


def megatron_to_mixtral(state: dict[str, torch.Tensor], cfg: ExperimentConfig) -> dict:
    """Tensors of the full (TP=PP=EP=1) model -> Mixtral's names (contiguous copies)."""
    groups, per_group, head_dim = _qkv_sizes(cfg)
    hidden = cfg.model.hidden_size
    ffn = cfg.model.moe.ffn_hidden_size
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"],
           "model.norm.weight": state["decoder.final_layernorm.weight"]}
    if cfg.model.untie_embeddings:
        out["lm_head.weight"] = state["output_layer.weight"]
    for layer in range(cfg.model.num_layers):
        src, dst = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        qkv = state[src + "self_attention.linear_qkv.weight"].view(groups, per_group + 2, head_dim,
                                                                   hidden)
        out[dst + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(-1, hidden)
        out[dst + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(-1, hidden)
        out[dst + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(-1, hidden)
        out[dst + "self_attn.o_proj.weight"] = state[src + "self_attention.linear_proj.weight"]
        out[dst + "input_layernorm.weight"] = state[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "pre_mlp_layernorm.weight"]
        out[dst + "block_sparse_moe.gate.weight"] = state[src + "mlp.router.weight"]
        for e in range(cfg.model.moe.num_experts):
            expert = f"{src}mlp.experts.local_experts.{e}."
            fc1 = state[expert + "linear_fc1.weight"]
            moe_dst = f"{dst}block_sparse_moe.experts.{e}."
            out[moe_dst + "w1.weight"] = fc1[:ffn]  # SwiGLU gate: silu(x W1) * (x W3)
            out[moe_dst + "w3.weight"] = fc1[ffn:]
            out[moe_dst + "w2.weight"] = state[expert + "linear_fc2.weight"]
    # Own host copies: safetensors refuses tensors that share storage (w1/w3 halves of fc1).
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in out.items()}


def mixtral_to_megatron(hf: dict[str, torch.Tensor], cfg: ExperimentConfig) -> dict:
    """The inverse of megatron_to_mixtral; ConfigError listing every missing or extra tensor."""
    needed = set(megatron_to_mixtral_names(cfg))
    present = set(hf)
    if cfg.model.untie_embeddings is False:
        present.discard("lm_head.weight")  # tied: a saved copy of the embedding is not used
    missing, extra = sorted(needed - present), sorted(present - needed)
    if missing or extra:
        raise ConfigError(f"the Mixtral weights do not match the config's model: missing "
                          f"{missing[:6] or 'none'}, unexpected {extra[:6] or 'none'}"
                          f"{' (and more)' if len(missing) > 6 or len(extra) > 6 else ''}")
    groups, per_group, head_dim = _qkv_sizes(cfg)
    hidden = cfg.model.hidden_size
    out = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if cfg.model.untie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    for layer in range(cfg.model.num_layers):
        src, dst = f"model.layers.{layer}.", f"decoder.layers.{layer}."
        q = hf[src + "self_attn.q_proj.weight"].view(groups, per_group, head_dim, hidden)
        k = hf[src + "self_attn.k_proj.weight"].view(groups, 1, head_dim, hidden)
        v = hf[src + "self_attn.v_proj.weight"].view(groups, 1, head_dim, hidden)
        out[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(
            -1, hidden)
        out[dst + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        out[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        out[dst + "mlp.router.weight"] = hf[src + "block_sparse_moe.gate.weight"]
        for e in range(cfg.model.moe.num_experts):
            moe_src = f"{src}block_sparse_moe.experts.{e}."
            expert = f"{dst}mlp.experts.local_experts.{e}."
            out[expert + "linear_fc1.weight"] = torch.cat(
                [hf[moe_src + "w1.weight"], hf[moe_src + "w3.weight"]], dim=0)
            out[expert + "linear_fc2.weight"] = hf[moe_src + "w2.weight"]
    return out


def megatron_to_mixtral_names(cfg: ExperimentConfig) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if cfg.model.untie_embeddings:
        names.append("lm_head.weight")
    for layer in range(cfg.model.num_layers):
        p = f"model.layers.{layer}."
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                  p + "block_sparse_moe.gate.weight"]
        names += [f"{p}block_sparse_moe.experts.{e}.{w}.weight"
                  for e in range(cfg.model.moe.num_experts) for w in ("w1", "w2", "w3")]
    return names


def mixtral_config(cfg: ExperimentConfig, tconfig, vocab_size: int, special_ids: dict,
                   dtype: str) -> dict:
    """config.json of the export. rope_theta is written both ways transformers has read it
    (top level before 5.0, rope_parameters since)."""
    m = cfg.model
    groups, _, head_dim = _qkv_sizes(cfg)
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.moe.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": groups,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": m.seq_length,
        "rms_norm_eps": tconfig.layernorm_epsilon,
        "rope_theta": float(m.rotary_base),
        "rope_parameters": {"rope_theta": float(m.rotary_base), "rope_type": "default"},
        "num_local_experts": m.moe.num_experts,
        "num_experts_per_tok": m.moe.top_k,
        "router_aux_loss_coef": m.moe.aux_loss_coeff,
        "router_jitter_noise": 0.0,
        "output_router_logits": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "tie_word_embeddings": not m.untie_embeddings,
        "initializer_range": m.init_method_std,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
        **special_ids,
    }


def config_agreement(hf: dict, cfg: ExperimentConfig, vocab_size: int,
                     norm_eps: float) -> list[str]:
    """Differences between a Mixtral config.json and our config's model (empty: they agree)."""
    m = cfg.model
    groups, _, head_dim = _qkv_sizes(cfg)
    pairs = [
        ("vocab_size", vocab_size, "model.vocab_size"),
        ("hidden_size", m.hidden_size, "model.hidden_size"),
        ("intermediate_size", m.moe.ffn_hidden_size, "model.moe.ffn_hidden_size"),
        ("num_hidden_layers", m.num_layers, "model.num_layers"),
        ("num_attention_heads", m.num_attention_heads, "model.num_attention_heads"),
        ("num_key_value_heads", groups, "model.num_query_groups"),
        ("num_local_experts", m.moe.num_experts, "model.moe.num_experts"),
        ("num_experts_per_tok", m.moe.top_k, "model.moe.top_k"),
        ("tie_word_embeddings", not m.untie_embeddings, "model.untie_embeddings (negated)"),
    ]
    found = [f"{key}={hf.get(key)!r} but {ours_key} gives {ours!r}"
             for key, ours, ours_key in pairs if hf.get(key, ours) != ours]
    if hf.get("head_dim") not in (None, head_dim):
        found.append(f"head_dim={hf['head_dim']} but hidden_size/num_attention_heads={head_dim}")
    theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))
    if theta is not None and float(theta) != float(m.rotary_base):
        found.append(f"rope_theta={theta} but model.rotary_base={m.rotary_base}")
    if float(hf.get("rms_norm_eps", norm_eps)) != norm_eps:
        found.append(f"rms_norm_eps={hf['rms_norm_eps']} but our RMSNorm uses {norm_eps}")
    if hf.get("hidden_act", "silu") != "silu":
        found.append(f"hidden_act={hf['hidden_act']!r} (only silu/SwiGLU imports)")
    return found
