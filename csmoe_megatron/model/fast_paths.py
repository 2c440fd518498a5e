"""Which GPU fast paths a run uses: the `kernels` section (and model.moe.grouped_gemm) against
what this machine has.

Each switch is "auto" (on when CUDA and the library it needs are present), "on" (required:
refused with the missing piece named) or "off". On CPU every fast path is off, so CPU runs are
the exact, unfused reference the parity tests compare against. Resolved once, before megatron's
TransformerConfig is built (its __post_init__ refuses some of them without their library).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch

from ..config.load import ConfigError
from ..config.schema import ExperimentConfig


@dataclass
class FastPaths:
    transformer_engine: bool = False
    grouped_gemm: bool = False
    permute_fusion: bool = False
    gradient_accumulation_fusion: bool = False
    bias_activation_fusion: bool = False
    bias_dropout_fusion: bool = False
    masked_softmax_fusion: bool = False
    rope_fusion: bool = False
    off_because: dict = field(default_factory=dict)  # name -> why an "auto" path is off

    def summary(self) -> str:
        if not torch.cuda.is_available():
            return "fast paths: none (CPU: the unfused reference path)"
        on = [name for name in _NAMES if getattr(self, name)]
        off = [f"{name} ({why})" for name, why in self.off_because.items()]
        return (f"fast paths on: {', '.join(on) or 'none'}"
                + (f"; off: {'; '.join(off)}" if off else ""))


_NAMES = ("transformer_engine", "grouped_gemm", "permute_fusion",
          "gradient_accumulation_fusion", "bias_activation_fusion", "bias_dropout_fusion",
          "masked_softmax_fusion", "rope_fusion")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def _missing(name: str, te: bool) -> str | None:
    """Why fast path `name` cannot run here (None: it can). `te`: the TE spec will be used."""
    if not torch.cuda.is_available():
        return "no CUDA"
    if name == "transformer_engine":
        return None if _te_available() else "Transformer Engine is not importable"
    if name == "grouped_gemm":
        from megatron.core.transformer.moe.grouped_gemm_util import grouped_gemm_is_available

        return None if te or grouped_gemm_is_available() else \
            "needs the Transformer Engine spec (TEGroupedMLP) or the grouped_gemm package"
    if name == "permute_fusion":
        from megatron.core.transformer.moe import moe_utils

        return None if getattr(moe_utils, "fused_permute", None) is not None else \
            "needs Transformer Engine >= 2.1"
    if name == "rope_fusion":
        from megatron.core.models.common.embeddings import rope_utils

        return None if rope_utils.fused_apply_rotary_pos_emb is not None else \
            "needs Transformer Engine >= 1.4"
    if name == "gradient_accumulation_fusion":  # megatron's own linears (the output layer)
        return None if _importable("fused_weight_gradient_mlp_cuda") else \
            "needs Apex's fused_weight_gradient_mlp_cuda"
    if name == "masked_softmax_fusion":  # the local attention's softmax kernels
        return None if te or _importable("scaled_masked_softmax_cuda") else \
            "needs Apex's/megatron's scaled_masked_softmax_cuda"
    return None  # bias_activation_fusion, bias_dropout_fusion: megatron's own torch fusions


def resolve(cfg: ExperimentConfig) -> FastPaths:
    """The fast paths this run uses on this machine; ConfigError for an "on" that cannot run."""
    switches = {name: getattr(cfg.kernels, name, None) for name in _NAMES}
    switches["grouped_gemm"] = cfg.model.moe.grouped_gemm
    paths = FastPaths()
    for name in _NAMES:  # transformer_engine first: the others depend on the spec
        if switches[name] == "off":
            continue
        missing = _missing(name, paths.transformer_engine)
        if name == "bias_activation_fusion" and cfg.model.activation == "gelu":
            # megatron fuses a plain (non-gated) GeLU only together with a bias; ours have none.
            missing = "megatron fuses GeLU only with a linear bias, and these linears have none"
        if missing is None:
            setattr(paths, name, True)
        elif switches[name] == "on":
            key = "model.moe.grouped_gemm" if name == "grouped_gemm" else f"kernels.{name}"
            raise ConfigError(f"{key}=on, but it cannot run here: {missing}; set {key}=auto "
                              f"(use it where available) or off")
        else:
            paths.off_because[name] = missing
    return paths
