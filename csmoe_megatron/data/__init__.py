"""Data: megatron-core GPT datasets (indexed, blended, or mock), resumable DP micro-batches,
and the embedded default corpus."""

from .datasets import MockTokenizer, build_datasets, parse_blend
from .loader import MicroBatchIterator

__all__ = ["MicroBatchIterator", "MockTokenizer", "build_datasets", "parse_blend"]
