"""Held-out sets evaluated whole: every token once, and the bytes of the text it stands for.

`HeldoutWindows(prefixes, seq_length)` reads indexed datasets (csmoe-tokenizer encode output;
each document ends with EOS) as one token stream in file order and cuts it into consecutive
windows of seq_length predictions: window i feeds tokens [i*S, i*S+S) and predicts
[i*S+1, i*S+S+1), so every token but the stream's first is predicted exactly once, nothing
is sampled or shuffled. The last window is padded (loss mask 0); `pad_to` adds whole masked
windows so every rank runs the same number of batches.

`utf8_bytes_of_tokens(tokenizer, ids)` gives the UTF-8 size of the text those ids decode to
(with the run's SentencePiece tokenizer), for bits per byte: total nats / (ln 2 * bytes),
comparable across tokenizers. Nothing beyond the token files is needed.
"""

from __future__ import annotations

import math

import numpy
import torch


class HeldoutWindows:
    """Indexable like megatron's GPTDataset: item -> dict(tokens, labels, loss_mask,
    position_ids) of seq_length each."""

    def __init__(self, prefixes: list[str], seq_length: int, pad_id: int = 0, pad_to: int = 1):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        parts = []
        for prefix in prefixes:
            data = IndexedDataset(str(prefix), mmap=True)
            count = int(data.index.sequence_lengths.sum())
            # A copy now: the memory map closes with `data`.
            parts.append(numpy.array(data.bin_reader.read(data.index.dtype, count, 0),
                                     dtype=numpy.int64))
        self.stream = numpy.concatenate(parts) if parts else numpy.zeros(0, numpy.int64)
        self.seq_length = seq_length
        self.pad_id = pad_id
        self.num_targets = max(len(self.stream) - 1, 0)
        self.num_windows = math.ceil(self.num_targets / seq_length)
        self.padded_windows = math.ceil(self.num_windows / pad_to) * pad_to

    def __len__(self) -> int:
        return self.padded_windows

    def target_ids(self) -> numpy.ndarray:
        """The ids that are predicted (all but the stream's first), in order."""
        return self.stream[1:]

    def __getitem__(self, index: int) -> dict:
        s = self.seq_length
        start = min(index * s, self.num_targets)
        inputs = self.stream[start:min(start + s, self.num_targets)]
        labels = self.stream[start + 1:start + 1 + len(inputs)]
        n = len(inputs)
        tokens = torch.full((s,), self.pad_id, dtype=torch.int64)
        targets = torch.full((s,), self.pad_id, dtype=torch.int64)
        mask = torch.zeros(s, dtype=torch.float32)
        tokens[:n] = torch.from_numpy(inputs.copy())
        targets[:n] = torch.from_numpy(labels.copy())
        mask[:n] = 1.0
        return {"tokens": tokens, "labels": targets, "loss_mask": mask,
                "position_ids": torch.arange(s, dtype=torch.int64)}


def utf8_bytes_of_tokens(tokenizer, token_ids, eod: int | None = None) -> int:
    """UTF-8 bytes of the text `token_ids` decode to with `tokenizer` (anything with
    .decode(ids) -> str, e.g. csmoe_tokenizer's SentencePieceTokenizer). Decoded one document
    at a time (split at `eod`, default tokenizer.eod), as SentencePiece drops the space it
    adds before each document's first word; special tokens decode to nothing."""
    ids = numpy.asarray(token_ids, dtype=numpy.int64)
    eod = getattr(tokenizer, "eod", None) if eod is None else eod
    ends = numpy.flatnonzero(ids == eod) if eod is not None else numpy.zeros(0, numpy.int64)
    total, start = 0, 0
    for end in [*ends.tolist(), len(ids)]:
        if end > start:
            total += len(tokenizer.decode(ids[start:end].tolist()).encode("utf-8"))
        start = end + 1
    return total


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Cross-entropy summed over the predicted tokens, in bits per UTF-8 byte of their text."""
    return total_nats / (math.log(2.0) * total_bytes) if total_bytes > 0 else float("nan")
