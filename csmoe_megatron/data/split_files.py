"""Write the valid/test parts of `data.split` as indexed datasets of their own.

    python -m csmoe_megatron.data.split_files OUT_DIR [--prefix PREFIX] [--split 969,30,1]

Without --prefix it splits the built-in default corpus (preparing it if needed). The
documents of each part are exactly those megatron-core's dataset builder gives that part
for the same split string (same normalisation and rounding), so a run training with that
data.split never reads them: OUT_DIR/valid and OUT_DIR/test can be given as
data.valid_prefixes / data.test_prefixes. Prints the prefixes as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy

PARTS = ("train", "valid", "test")


def split_document_ranges(num_documents: int, split: str) -> dict[str, tuple[int, int]]:
    """{part: (first, end)} document ranges, as BlendedMegatronDatasetBuilder computes them."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    ranges = {}
    for part, bookends in zip(PARTS, matrix):
        if bookends is not None:
            ranges[part] = (int(round(bookends[0] * float(num_documents))),
                            int(round(bookends[1] * float(num_documents))))
    return ranges


def write_split_prefixes(prefix: str, split: str, out_dir: Path,
                         parts=("valid", "test")) -> dict[str, str]:
    """Write each non-empty part of `split` of the indexed dataset `prefix` as OUT_DIR/<part>
    (.bin/.idx, same token dtype). Returns {part: prefix written}."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    source = IndexedDataset(prefix, mmap=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, (first, end) in split_document_ranges(len(source), split).items():
        if part not in parts or end <= first:
            continue
        target = out_dir / part
        builder = IndexedDatasetBuilder(f"{target}.bin", dtype=source.index.dtype)
        for i in range(first, end):
            tokens = numpy.asarray(source[i])
            builder.add_document(tokens, [tokens.size])
        builder.finalize(f"{target}.idx")
        written[part] = str(target)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m csmoe_megatron.data.split_files",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--prefix", help="indexed dataset to split (default: the default corpus)")
    p.add_argument("--split", default="969,30,1", help="train,valid,test weights (data.split)")
    args = p.parse_args(argv)
    prefix = args.prefix
    if prefix is None:
        from .default_corpus import prepare_default_corpus

        prefix = prepare_default_corpus().prefix
    print(json.dumps(write_split_prefixes(prefix, args.split, args.out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
