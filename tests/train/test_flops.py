"""The analytic parameter count matches the model megatron-core actually builds; the FLOPs per
token match a hand count."""

import pytest

from tests.dist_utils import run_distributed


def _count(rank, world_size, overrides):
    from pathlib import Path

    from csmoe_megatron.config import load_config
    from csmoe_megatron.config.megatron import transformer_config
    from csmoe_megatron.model import build_model_chunks
    from csmoe_megatron.train.flops import parameter_counts

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs/cpu_tiny.yaml", ["parallel.expert=1", *overrides])
    model = build_model_chunks(cfg, transformer_config(cfg, use_cpu=True), 256)[0]
    built = sum(p.numel() for name, p in model.named_parameters() if "norm" not in name)
    total, active = parameter_counts(cfg, 256)
    assert built == total, (built, total)
    assert active < total


def test_parameter_count_matches_built_model():
    run_distributed(_count, world_size=1, overrides=[])


def test_parameter_count_untied_gelu_every_other_layer():
    run_distributed(_count, world_size=1, overrides=["model.untie_embeddings=true",
                                                     "model.activation=gelu", "model.moe.layer_freq=2"])


@pytest.mark.parametrize("untie", [False, True])
def test_flops_per_token_by_hand(untie):
    """4 layers (MoE at 0 and 2, dense at 1 and 3), H=64, 4 heads in 2 query groups, V=512.
    Tied or not, the same FLOPs: the embedding lookup costs none and the output layer is one
    V x H matmul."""
    from csmoe_megatron.config import load_config
    from csmoe_megatron.train.flops import flops_per_token

    cfg = load_config(None, [
        "model.num_layers=4", "model.hidden_size=64", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.ffn_hidden_size=256", "model.seq_length=128",
        "model.activation=swiglu", f"model.untie_embeddings={str(untie).lower()}",
        "model.moe.num_experts=8", "model.moe.top_k=2", "model.moe.ffn_hidden_size=128",
        "model.moe.layer_freq=2"])
    attention = 64 * (64 + 2 * 32) + 64 * 64  # q, k, v (kv width 2 groups x 16) + projection
    dense_mlp = 3 * 64 * 256  # SwiGLU: 3 matrices
    moe = 64 * 8 + 2 * 3 * 64 * 128  # router + 2 active experts
    output_layer = 512 * 64
    matmul = 4 * attention + 2 * dense_mlp + 2 * moe + output_layer
    scores = 2 * 4 * 128 * 64  # a token: QK^T and AV, S x H multiply-adds each, 4 layers
    assert flops_per_token(cfg, 512) == 6 * matmul + 6 * scores == 2070528
