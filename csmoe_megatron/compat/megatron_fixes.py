"""Small defects of megatron-core 0.16.1 that show without Transformer Engine, on CPU and GPU
alike (compat.install applies them in every case)."""

from __future__ import annotations


def install() -> None:
    from megatron.core.transformer.moe import moe_utils

    # RouterGatingLinearFunction tests `te_general_gemm is not None`, but the name is only
    # bound when TE imports: without TE it raises NameError instead of taking the torch path.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
