"""Our SentencePiece tokenizer in the form transformers' AutoTokenizer loads (tokenizer.json of
the `tokenizers` library, plus tokenizer.model kept for tools that read SentencePiece).

transformers' own conversion of a SentencePiece BPE model (as for Llama) differs from
SentencePiece on our models in three places, so the converted tokenizer is adjusted to give the
same ids as SentencePiece:
  * SentencePiece adds its "▁" dummy prefix to every text (also one starting with a space or a
    newline): a Prepend + Replace normalizer instead of the Metaspace "first" pre-tokenizer;
  * our "\\n" piece (a user-defined symbol) stays a vocabulary piece, not an added token (added
    tokens are split off before normalisation, which would move the dummy prefix);
  * special tokens written in the text are text, as in SentencePiece (split_special_tokens).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

_NORMALIZER = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}


def write_hf_tokenizer(tokenizer_dir: Path, output: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and tokenizer.model
    into `output` (needs transformers: the hf extra)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from csmoe_tokenizer.model import load_tokenizer

    ours = load_tokenizer(tokenizer_dir)
    staging = output / ".tokenizer_src"
    staging.mkdir(parents=True)
    try:
        shutil.copyfile(ours.model_path, staging / "tokenizer.model")
        # transformers converts a Llama-style SentencePiece BPE model on loading.
        (staging / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False,
             "add_eos_token": False, "legacy": False}))
        converted = AutoTokenizer.from_pretrained(str(staging))
        spec = json.loads(converted.backend_tokenizer.to_str())
    finally:
        shutil.rmtree(staging)
    spec["normalizer"] = _NORMALIZER
    spec["pre_tokenizer"] = None
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t.get("special")]
    piece = ours.id_to_piece
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=piece(ours.bos_id), eos_token=piece(ours.eos_id), unk_token=piece(ours.unk_id),
        pad_token=piece(ours.pad_id), clean_up_tokenization_spaces=False,
        split_special_tokens=True)
    fast.save_pretrained(str(output))
    shutil.copyfile(ours.model_path, output / "tokenizer.model")


def special_ids(tokenizer_dir: Path | None) -> dict:
    if tokenizer_dir is None:
        return {}
    from csmoe_tokenizer.model import load_tokenizer

    ours = load_tokenizer(tokenizer_dir)
    return {"bos_token_id": ours.bos_id, "eos_token_id": ours.eos_id, "pad_token_id": ours.pad_id}
