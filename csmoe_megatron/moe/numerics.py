"""Precision policy shared by the pure CompeteSMoE functions."""
from __future__ import annotations

import torch


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 to float32 for routing scores and losses; keep float32/float64 as is
    (float64 matters for exact comparisons in tests)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
