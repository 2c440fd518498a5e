"""Check an encoded dataset (PREFIX.bin / PREFIX.idx) before training reads it.

Reads the .idx header the way megatron-core's _IndexReader does (indexed_dataset.py), without
importing torch, and checks that the .bin size matches the token count the index promises.
"""

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy

from .errors import TokenizerUserError

_INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset._INDEX_HEADER
_HEADER_BYTES = 9 + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count
# megatron-core DType codes (indexed_dataset.DType)
_DTYPES = {1: numpy.uint8, 2: numpy.int8, 3: numpy.int16, 4: numpy.int32, 5: numpy.int64,
           6: numpy.float64, 7: numpy.float32, 8: numpy.uint16}


@dataclass(frozen=True)
class IndexedDatasetInfo:
    prefix: str
    documents: int
    sequences: int
    tokens: int
    dtype: type


def validate_indexed_prefix(prefix, vocab_size: Optional[int] = None) -> IndexedDatasetInfo:
    """Check PREFIX.bin and PREFIX.idx exist and agree; raise TokenizerUserError naming the file."""
    prefix = str(prefix)
    bin_path, idx_path = Path(prefix + ".bin"), Path(prefix + ".idx")
    fix = "Fix: re-create it with `csmoe-tokenizer encode --output-prefix " + prefix + "`."
    missing = [p for p in (bin_path, idx_path) if not p.is_file()]
    if missing:
        raise TokenizerUserError(
            f"Indexed dataset {prefix!r} is incomplete: {', '.join(map(str, missing))} missing "
            f"(a dataset prefix names two files, PREFIX.bin and PREFIX.idx; pass the prefix without "
            f"extension). {fix}"
        )
    idx_size = idx_path.stat().st_size
    with open(idx_path, "rb") as stream:
        header = stream.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES or header[:9] != _INDEX_HEADER:
        raise TokenizerUserError(f"{idx_path} is not a megatron-core index file (bad header). {fix}")
    version, code, sequences, documents = struct.unpack("<QBQQ", header[9:])
    if version != 1 or code not in _DTYPES:
        raise TokenizerUserError(f"{idx_path} has unsupported version {version} / dtype code {code}. {fix}")
    dtype = _DTYPES[code]
    plain = _HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if idx_size not in (plain, plain + sequences):  # the extra byte per sequence: multimodal modes
        raise TokenizerUserError(
            f"{idx_path} is {idx_size} bytes but its header promises {plain} (truncated or corrupt). {fix}"
        )
    if documents < 1:
        raise TokenizerUserError(f"{idx_path} lists no document boundaries (corrupt header). {fix}")
    lengths = _array(idx_path, numpy.int32, _HEADER_BYTES, sequences)
    pointers = _array(idx_path, numpy.int64, _HEADER_BYTES + sequences * 4, sequences)
    document_indices = _array(idx_path, numpy.int64, _HEADER_BYTES + sequences * 12, documents)
    if document_indices[0] != 0 or document_indices[-1] != sequences or (
        documents > 1 and numpy.any(numpy.diff(document_indices) < 0)
    ):
        raise TokenizerUserError(f"{idx_path} has inconsistent document indices. {fix}")
    itemsize = numpy.dtype(dtype).itemsize
    # Each sequence starts where the previous one ends: megatron reads .bin at these offsets,
    # so a damaged pointer or a negative length would read the wrong tokens, or past the end.
    if numpy.any(lengths < 0) or (sequences and (pointers[0] != 0 or numpy.any(
            numpy.diff(pointers) != lengths[:-1].astype(numpy.int64) * itemsize))):
        raise TokenizerUserError(f"{idx_path} has sequence lengths and offsets that disagree "
                                 f"(corrupt index). {fix}")
    tokens = int(lengths.sum(dtype=numpy.int64))
    if bin_path.stat().st_size != tokens * itemsize:
        raise TokenizerUserError(
            f"{bin_path} is {bin_path.stat().st_size} bytes but {idx_path} describes {tokens} tokens of "
            f"{itemsize} bytes ({tokens * itemsize} bytes): the two files do not belong together or one "
            f"is truncated. {fix}"
        )
    if vocab_size is not None and numpy.issubdtype(dtype, numpy.integer) and vocab_size - 1 > numpy.iinfo(dtype).max:
        raise TokenizerUserError(
            f"{bin_path} stores tokens as {numpy.dtype(dtype).name}, too small for vocab size {vocab_size}: "
            f"it was encoded with a different tokenizer. {fix}"
        )
    return IndexedDatasetInfo(prefix, documents - 1, sequences, tokens, dtype)


def _array(path: Path, dtype, offset: int, count: int) -> numpy.ndarray:
    # numpy.memmap refuses a zero-length map; the caller has checked the file's size.
    return numpy.memmap(path, dtype, "r", offset, (count,)) if count else numpy.zeros(0, dtype)
