"""Train/valid/test GPT datasets over megatron-core's indexed format (or its mock source).

megatron-core's BlendedMegatronDatasetBuilder does the work: weighted blends of prefixes,
the train/valid/test split, and a deterministic sample order for a seed (cached index files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

from ..config.schema import ExperimentConfig
from .cache_check import check_index_cache


@dataclass
class MockTokenizer:
    """What megatron's mock dataset reads from a tokenizer: vocab size and end-of-document id."""

    vocab_size: int
    eod: int = 0
    pad: int = 0

    @property
    def unique_identifiers(self) -> dict:
        # megatron hashes the dataset config, tokenizer included, into its index-cache names.
        return {"class": "MockTokenizer", "vocab_size": self.vocab_size, "eod": self.eod}


def parse_blend(prefixes: list) -> tuple[list[str], list[float] | None]:
    """[p1, p2] or [w1, p1, w2, p2] (Megatron's --data-path convention) -> (paths, weights)."""
    if not prefixes:
        raise ValueError("data.prefixes is empty")
    if all(isinstance(p, str) for p in prefixes):
        return [str(p) for p in prefixes], None
    if len(prefixes) % 2 or not all(isinstance(w, (int, float)) for w in prefixes[0::2]):
        raise ValueError("data.prefixes must be [prefix, ...] or [weight, prefix, weight, prefix, ...]")
    return [str(p) for p in prefixes[1::2]], [float(w) for w in prefixes[0::2]]


def build_datasets(cfg: ExperimentConfig, tokenizer, sample_counts: tuple[int, int, int],
                   cache_dir: Path, prefixes: list | None = None):
    """Build (train, valid, test) datasets on every rank (the builder synchronises the ranks)."""
    mock = cfg.data.source == "mock"
    blend = None if mock else parse_blend(prefixes if prefixes is not None else cfg.data.prefixes)
    config = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.model.seq_length,
        blend=blend,
        split=cfg.data.split,
        path_to_cache=str(cache_dir),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal masking is done by attention itself
        mmap_bin_files=True,
    )
    check_index_cache(Path(cache_dir))
    cls = MockGPTDataset if mock else GPTDataset
    builder = BlendedMegatronDatasetBuilder(cls, list(sample_counts), _always, config)
    return builder.build()


def _always() -> bool:
    # Every rank reads its own micro-batches, so every rank needs the datasets.
    return True


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in ("tokens", "labels", "loss_mask",
                                                              "position_ids")}
