"""Which GPU fast paths a run uses: all off on CPU; with CUDA, "auto" takes what the machine
has and names what it lacks; "on" without its library is refused; the TransformerConfig gets
exactly the resolved flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from csmoe_megatron.config import ConfigError, load_config
from csmoe_megatron.model import fast_paths

REPO = Path(__file__).resolve().parents[2]
NAMES = ("transformer_engine", "grouped_gemm", "permute_fusion", "gradient_accumulation_fusion",
         "bias_activation_fusion", "bias_dropout_fusion", "masked_softmax_fusion", "rope_fusion")


def _cfg(*overrides):
    return load_config(REPO / "configs/gpu_node_competesmoe.yaml", list(overrides))


def test_switches_read_yaml_booleans_and_refuse_other_words():
    cfg = _cfg("kernels.rope_fusion=false", "model.moe.grouped_gemm=true")
    assert cfg.kernels.rope_fusion == "off" and cfg.model.moe.grouped_gemm == "on"
    with pytest.raises(ConfigError, match="kernels.rope_fusion is 'maybe'"):
        _cfg("kernels.rope_fusion=maybe")


def test_on_cpu_every_fast_path_is_off():
    paths = fast_paths.resolve(_cfg())
    assert not any(getattr(paths, name) for name in NAMES)
    assert "CPU" in paths.summary()


@pytest.fixture
def cuda_without_te(monkeypatch):
    """A CUDA machine with none of TE, Apex or grouped_gemm (the device machine's state)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fast_paths, "_te_available", lambda: False)
    monkeypatch.setattr(fast_paths, "_importable", lambda module: False)


def test_auto_takes_what_a_cuda_machine_without_te_has(cuda_without_te):
    paths = fast_paths.resolve(_cfg())
    assert paths.bias_activation_fusion and paths.bias_dropout_fusion
    for name in ("transformer_engine", "grouped_gemm", "permute_fusion",
                 "gradient_accumulation_fusion", "masked_softmax_fusion", "rope_fusion"):
        assert not getattr(paths, name)
        assert paths.off_because[name]  # says why
    assert "Transformer Engine is not importable" in paths.summary()


def test_off_is_off_even_where_available(cuda_without_te):
    paths = fast_paths.resolve(_cfg("kernels.bias_activation_fusion=off"))
    assert not paths.bias_activation_fusion and "bias_activation_fusion" not in paths.off_because


def test_gelu_without_bias_never_gets_the_bias_activation_fusion(cuda_without_te):
    # megatron refuses a fused plain GeLU without a linear bias at TransformerConfig build.
    paths = fast_paths.resolve(_cfg("model.activation=gelu"))
    assert not paths.bias_activation_fusion and "bias" in paths.off_because["bias_activation_fusion"]
    with pytest.raises(ConfigError, match="kernels.bias_activation_fusion=on"):
        fast_paths.resolve(_cfg("model.activation=gelu", "kernels.bias_activation_fusion=on"))


@pytest.mark.parametrize("key", ["kernels.transformer_engine", "kernels.rope_fusion",
                                 "kernels.gradient_accumulation_fusion", "model.moe.grouped_gemm"])
def test_on_without_its_library_is_refused_by_name(cuda_without_te, key):
    with pytest.raises(ConfigError, match=f"{key}=on, but it cannot run here"):
        fast_paths.resolve(_cfg(f"{key}=on"))


def test_te_present_turns_on_the_spec_and_grouped_gemm(cuda_without_te, monkeypatch):
    monkeypatch.setattr(fast_paths, "_te_available", lambda: True)
    paths = fast_paths.resolve(_cfg())
    assert paths.transformer_engine and paths.grouped_gemm and paths.masked_softmax_fusion
    paths = fast_paths.resolve(_cfg("kernels.transformer_engine=off"))
    assert not paths.transformer_engine and not paths.grouped_gemm  # TEGroupedMLP needs it


def test_transformer_config_gets_the_resolved_flags(cuda_without_te):
    from csmoe_megatron.config.megatron import transformer_config

    cfg = _cfg("parallel.expert=1")
    paths = fast_paths.resolve(cfg)
    tconfig = transformer_config(cfg, use_cpu=True, fast_paths=paths)
    assert tconfig.bias_activation_fusion and tconfig.bias_dropout_fusion
    assert not (tconfig.moe_grouped_gemm or tconfig.moe_permute_fusion or
                tconfig.gradient_accumulation_fusion or tconfig.apply_rope_fusion)
    plain = transformer_config(cfg, use_cpu=True)
    assert not (plain.bias_activation_fusion or plain.bias_dropout_fusion)
