"""Tokenizer training and corpus preprocessing for csmoe_megatron, installed as the import
package `csmoe_tokenizer` (PyPI's "tokenizer" project owns the name of this folder).

Python API:
  load_tokenizer(DIR)               -> SentencePieceTokenizer (.vocab_size, .eos_id, .bos_id,
                                       .pad_id, .unk_id, .encode(str), .decode(ids))
  train_tokenizer(inputs, DIR, N)   -> TrainSummary
  encode_corpus(inputs, DIR, PREFIX)-> EncodeSummary (writes PREFIX.bin / PREFIX.idx)
  validate_indexed_prefix(PREFIX)   -> IndexedDatasetInfo, or TokenizerUserError
Command line: `csmoe-tokenizer train|encode|validate --help`.
"""

from .encode import EncodeSummary, encode_corpus
from .errors import TokenizerUserError
from .indexed import IndexedDatasetInfo, validate_indexed_prefix
from .metadata import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from .model import SentencePieceTokenizer, load_tokenizer
from .train import TrainSummary, train_tokenizer

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "EncodeSummary", "IndexedDatasetInfo",
    "SentencePieceTokenizer", "TokenizerUserError", "TrainSummary", "encode_corpus",
    "load_tokenizer", "train_tokenizer", "validate_indexed_prefix",
]
