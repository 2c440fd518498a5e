"""Model assembly: megatron-core GPTModel chunks built from layer specs."""

from .build import build_model_chunks, padded_vocab_size, unwrap

__all__ = ["build_model_chunks", "padded_vocab_size", "unwrap"]
