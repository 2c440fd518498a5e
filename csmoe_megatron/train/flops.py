"""Parameter counts and model FLOPs per token (for TFLOP/s and MFU on GPU), from the config:
6 x the active parameters that multiply (the output layer does, the embedding lookup does not)
plus the attention score/value products, as in Megatron-LM's throughput report."""

from __future__ import annotations

from ..config.schema import ExperimentConfig

# Dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def parameter_counts(cfg: ExperimentConfig, vocab_size: int) -> tuple[int, int]:
    """(total, active per token) parameters of the whole model, norms left out."""
    m, moe = cfg.model, cfg.model.moe
    h, L = m.hidden_size, m.num_layers
    kv = (m.num_query_groups or m.num_attention_heads) * (h // m.num_attention_heads)
    attn = h * (h + 2 * kv) + h * h  # qkv + output projection
    glu = 3 if m.activation == "swiglu" else 2
    num_moe = m.num_moe_layers
    dense_mlp = glu * h * m.ffn_hidden_size
    expert = glu * h * moe.ffn_hidden_size
    router = h * moe.num_experts
    embeddings = vocab_size * h * (2 if m.untie_embeddings else 1)
    shared = L * attn + (L - num_moe) * dense_mlp + num_moe * router + embeddings
    total = shared + num_moe * moe.num_experts * expert
    active = shared + num_moe * moe.top_k * expert
    return total, active


def flops_per_token(cfg: ExperimentConfig, vocab_size: int) -> float:
    """Training FLOPs per token on router steps (forward + backward)."""
    _, active = parameter_counts(cfg, vocab_size)
    m = cfg.model
    embedding = vocab_size * m.hidden_size  # one V x H matrix
    # The input embedding is a lookup (no FLOPs); the output layer is one V x H matmul, tied
    # or not. So: every embedding matrix out of `active` (1 tied, 2 untied), the output layer in.
    matmul_params = active - embedding * (2 if m.untie_embeddings else 1) + embedding
    attention = 2 * m.num_layers * m.seq_length * m.hidden_size  # QK^T and AV, per token
    return 6.0 * matmul_params + 6.0 * attention


def peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in _PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None
