"""A torch LayerNorm/RMSNorm usable with sequence parallelism (no Apex/TE needed).

megatron's WrappedTorchNorm refuses sequence_parallel. Under SP each TP rank normalises its own
slice of the sequence, so the norm itself is unchanged; only its weight gradients must be summed
across the TP group, which megatron's finalize_model_grads does for parameters that carry a
`sequence_parallel` attribute. So: the plain torch norm, with that attribute set.
"""

from __future__ import annotations

import torch


class SequenceParallelTorchNorm:
    """Factory with the signature megatron's specs use for layer norms."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str | None = None):
        kind = normalization or config.normalization
        if kind == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        elif kind == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        else:
            raise ValueError(f"unsupported normalization {kind!r}; use RMSNorm or LayerNorm")
        for param in norm.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)
        return norm
