"""Model FLOPs per token (for TFLOP/s and MFU on GPU): 6 x active parameters for the matmuls
plus the attention score/value products, as in Megatron-LM's throughput report."""

from __future__ import annotations

from ..config.schema import ExperimentConfig

# Dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def flops_per_token(cfg: ExperimentConfig, vocab_size: int) -> float:
    m, moe = cfg.model, cfg.model.moe
    h, L, s = m.hidden_size, m.num_layers, m.seq_length
    kv = (m.num_query_groups or m.num_attention_heads) * (h // m.num_attention_heads)
    attn = h * (h + 2 * kv) + h * h  # qkv + output projection
    glu = 3 if m.activation == "swiglu" else 2
    num_moe = sum(1 for i in range(L) if i % moe.layer_freq == 0)
    mlp_dense = glu * h * m.ffn_hidden_size
    mlp_moe = moe.top_k * glu * h * moe.ffn_hidden_size + h * moe.num_experts  # + router
    params = L * attn + (L - num_moe) * mlp_dense + num_moe * mlp_moe + vocab_size * h
    return 6.0 * params + 6.0 * 2 * L * s * h  # attention products, causal not halved


def peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in _PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None
