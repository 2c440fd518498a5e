"""The loaded tokenizer used by the data pipeline and training: `load_tokenizer(DIR)`."""

from pathlib import Path
from typing import Sequence

import sentencepiece

from .errors import TokenizerUserError
from .metadata import MODEL_FILE, read_metadata, sha256_of


class SentencePieceTokenizer:
    """A SentencePiece model plus its fixed special ids.

    Also answers to the names megatron-core's datasets use (`eod`, `pad`, `tokenize`,
    `detokenize`), so it can be handed to a GPTDatasetConfig directly.
    """

    def __init__(self, directory: Path, metadata: dict, model_proto: bytes):
        self.directory = directory
        self.metadata = metadata
        self.model_path = directory / MODEL_FILE
        self.model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size: int = self._processor.vocab_size()
        self.pad_id: int = self._processor.pad_id()
        self.unk_id: int = self._processor.unk_id()
        self.bos_id: int = self._processor.bos_id()
        self.eos_id: int = self._processor.eos_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self._processor.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._processor.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(int(token_id))

    # megatron-core tokenizer vocabulary
    @property
    def eod(self) -> int:
        return self.eos_id

    @property
    def pad(self) -> int:
        return self.pad_id

    @property
    def unique_identifiers(self) -> dict:
        # megatron hashes these into its dataset index-cache names: another model, another cache.
        return {"class": type(self).__name__, "model_sha256": self.metadata.get("model_sha256"),
                "vocab_size": self.vocab_size}

    def tokenize(self, text: str) -> list[int]:
        return self.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.decode(ids)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.directory)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(directory) -> SentencePieceTokenizer:
    """Load a directory written by `csmoe-tokenizer train`; TokenizerUserError if it is invalid."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    model_path = directory / MODEL_FILE
    fix = "Re-run `csmoe-tokenizer train` into this directory (add --force if asked)."
    try:
        model_proto = model_path.read_bytes()
    except OSError as error:
        raise TokenizerUserError(f"Cannot read tokenizer model {model_path}: {error}. {fix}") from None
    if sha256_of(model_proto) != metadata.get("model_sha256"):
        raise TokenizerUserError(
            f"{model_path} does not match the sha256 recorded in {directory / 'tokenizer.json'} "
            f"(the directory was modified or only partly copied). {fix}"
        )
    try:
        tokenizer = SentencePieceTokenizer(directory, metadata, model_proto)
    except (RuntimeError, OSError) as error:
        raise TokenizerUserError(f"{model_path} is not a SentencePiece model: {error}. {fix}") from None
    recorded = (metadata.get("vocab_size"), metadata.get("special_ids"))
    actual = (
        tokenizer.vocab_size,
        {"pad": tokenizer.pad_id, "unk": tokenizer.unk_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id},
    )
    if recorded != actual:
        raise TokenizerUserError(
            f"{directory / 'tokenizer.json'} records vocab/special ids {recorded} but the model "
            f"{model_path} has {actual}. {fix}"
        )
    return tokenizer
