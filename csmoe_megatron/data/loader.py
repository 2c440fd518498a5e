"""Deterministic, resumable micro-batches for one data-parallel rank.

Global sample order is the dataset's; a global batch is `global_batch_size` consecutive samples,
split into micro-batches of `micro_batch_size * dp` of which this rank takes its slice (as
Megatron-LM's pretraining sampler does). The position is one integer, `consumed_samples`, saved
in checkpoints, so a resumed run reads exactly the samples an uninterrupted run would have read.
"""

from __future__ import annotations

from typing import Iterator

from .datasets import collate


class MicroBatchIterator:
    def __init__(self, dataset, micro_batch_size: int, dp_rank: int, dp_size: int,
                 consumed_samples: int = 0):
        self.dataset = dataset
        self.mbs = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        stride = self.mbs * self.dp_size
        start = self.consumed_samples + self.dp_rank * self.mbs
        if self.consumed_samples + stride > len(self.dataset):
            raise StopIteration
        self.consumed_samples += stride
        return collate([self.dataset[(start + i)] for i in range(self.mbs)])
