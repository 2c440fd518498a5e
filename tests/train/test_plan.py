"""The plan `csmoe-train --check` prints: parameter counts against the configs' stated sizes,
and the memory estimate against its formulas (train/plan.py's docstring), worked by hand."""

from pathlib import Path

import pytest

from csmoe_megatron.config import load_config
from csmoe_megatron.train.plan import build_plan, format_plan, padded_vocab

REPO = Path(__file__).resolve().parents[2]
GPU_NODE = ["data.source=mock", "model.vocab_size=32000"]  # its own data is not on this machine


def test_gpu_node_config_has_the_sizes_it_states():
    plan = build_plan(load_config(REPO / "configs/gpu_node_competesmoe.yaml", GPU_NODE), 8)
    assert plan["params_total"] == pytest.approx(730e6, rel=0.01)  # "~730M parameters"
    assert plan["params_active"] == pytest.approx(140e6, rel=0.02)  # "~140M active"
    assert plan["layout"] == {"world_size": 8, "tensor": 1, "pipeline": 1, "virtual_pipeline": None,
                              "expert": 8, "expert_tensor": 1, "context": 1, "data_parallel": 8,
                              "expert_data_parallel": 1, "micro_batches_per_step": 8}
    assert plan["tokens_per_step"] == 256 * 2048
    assert plan["flops_competition_step"] > plan["flops_router_step"]


def test_memory_follows_the_stated_formulas():
    cfg = load_config(REPO / "configs/cpu_tiny.yaml", ["model.vocab_size=1024",
                                                        "parallel.distributed_optimizer=true"])
    plan = build_plan(cfg, 2)
    h, f_e, E, K, L, V, s, mbs = 128, 256, 8, 2, 4, 1024, 128, 4  # every layer is MoE
    experts = L * E * 3 * h * f_e
    dense = L * 4 * h * h + L * h * E  # attention + routers
    gpu = dense + V * h + experts / 2  # EP=2
    mem = plan["memory_per_gpu_bytes"]
    assert mem["params"] == pytest.approx(4 * gpu)  # fp32
    assert mem["grads"] == pytest.approx(4 * gpu)
    # Distributed optimizer: dense state over DP=2, expert state over expert-DP=1.
    assert mem["optimizer"] == pytest.approx(8 * ((dense + V * h) / 2 + experts / 2))
    row = 2 * h + 3 * f_e
    per_token = L * ((4 * h + 2 * h + 4 * s) * 4 + (2 * h + K * row) * 4 + 2 * E * 4) + 4 * V
    assert mem["activations_router_step"] == pytest.approx(per_token * mbs * s)
    compete = 2 * ((E - K) * row * 4 + E * 4 + K * h * 4)  # A_max=2 layers, winners combine
    assert mem["activations_competition_step"] == pytest.approx((per_token + compete) * mbs * s)


def test_vocab_is_padded_as_the_model_pads_it():
    from csmoe_megatron.model.build import padded_vocab_size

    cfg = load_config(REPO / "configs/cpu_tiny.yaml", ["parallel.tensor=2"])
    assert padded_vocab(cfg) == padded_vocab_size(4096, cfg) == 4096
    cfg.model.make_vocab_size_divisible_by = 100
    assert padded_vocab(cfg) == padded_vocab_size(4096, cfg) == 4200


def test_the_printed_plan_names_every_quantity():
    text = format_plan(build_plan(load_config(REPO / "configs/cpu_tiny.yaml"), 2))
    for word in ("world size 2", "EP 2", "total", "active per token", "tokens a step: 2,048",
                 "FLOPs a step", "params", "grads", "optimizer", "activations, router step",
                 "activations, competition step"):
        assert word in text, word
