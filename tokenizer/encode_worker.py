"""Work done in each encode worker process: decode, parse and tokenize one RawBatch.

Kept free of torch/megatron imports so spawned workers start quickly.
"""

from dataclasses import dataclass, field
from itertools import chain

import numpy
import sentencepiece

from .reader import RawBatch
from .records import BadRecord, empty_file_problem, record_text

_state = None  # per-process: (processor, json_key, eos tail, dtype)


@dataclass
class EncodedBatch:
    source: str
    tokens: numpy.ndarray  # all documents of the batch, concatenated
    lengths: numpy.ndarray  # tokens per document (EOS included)
    problems: list = field(default_factory=list)  # BadRecords, in file order
    empty_documents: int = 0
    nbytes: int = 0


def init_worker(model_proto: bytes, json_key: str, append_eos: bool, dtype_name: str) -> None:
    global _state
    processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    eos_tail = [processor.eos_id()] if append_eos else []
    _state = (processor, json_key, eos_tail, numpy.dtype(dtype_name))


def encode_batch(batch: RawBatch) -> EncodedBatch:
    processor, json_key, eos_tail, dtype = _state
    problems, texts, empty = [], [], 0
    if batch.empty_file:
        problems.append(empty_file_problem())
    for line, record in zip(batch.lines, batch.records):
        try:
            text = record_text(record, line, batch.is_jsonl, json_key)
        except BadRecord as problem:
            problems.append(problem)
            continue
        if text.strip():
            texts.append(text)
        else:
            empty += 1  # e.g. {"text": ""}: nothing to learn from, not an error
    # One thread per process: parallelism comes from --workers, not from SentencePiece.
    encoded = processor.encode(texts, num_threads=1) if texts else []
    lengths = numpy.fromiter((len(ids) + len(eos_tail) for ids in encoded), numpy.int64, len(encoded))
    pieces = chain.from_iterable(chain.from_iterable((ids, eos_tail) for ids in encoded))
    tokens = numpy.fromiter(pieces, dtype, int(lengths.sum()))
    return EncodedBatch(batch.source, tokens, lengths, problems, empty, batch.nbytes)
