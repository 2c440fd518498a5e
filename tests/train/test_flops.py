"""The analytic parameter count matches the model megatron-core actually builds."""

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
