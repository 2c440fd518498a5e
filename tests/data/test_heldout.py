"""Held-out sets evaluated whole (data/heldout.py) and the split's held-out parts written as
files (data/split_files.py), on tiny hand-made indexed datasets."""

import math

import numpy
import pytest
import torch

from csmoe_megatron.data.heldout import HeldoutWindows, bits_per_byte, utf8_bytes_of_tokens
from csmoe_megatron.data.split_files import split_document_ranges, write_split_prefixes


def _write(prefix, documents):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    for doc in documents:
        builder.add_document(numpy.array(doc, dtype=numpy.uint16), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_every_token_but_the_first_is_predicted_once(tmp_path):
    a = _write(tmp_path / "a", [[5, 6, 7, 3], [8, 9, 3]])  # 3 = EOS
    b = _write(tmp_path / "b", [[10, 11, 3]])
    windows = HeldoutWindows([a, b], seq_length=4, pad_id=0, pad_to=4)
    stream = [5, 6, 7, 3, 8, 9, 3, 10, 11, 3]
    assert windows.num_targets == 9 and windows.num_windows == 3 and len(windows) == 4
    labels, inputs = [], []
    for i in range(len(windows)):
        item = windows[i]
        keep = item["loss_mask"].bool()
        labels += item["labels"][keep].tolist()
        inputs += item["tokens"][keep].tolist()
        assert item["position_ids"].tolist() == [0, 1, 2, 3]
    assert labels == stream[1:] and inputs == stream[:-1]
    assert windows[3]["loss_mask"].sum() == 0  # the padding window of pad_to
    assert windows[2]["tokens"].tolist() == [11, 0, 0, 0]
    assert windows.target_ids().tolist() == stream[1:]


class _CharTokenizer:
    """id -> one character of `text`; 3 is EOS (decodes to nothing)."""

    eod = 3

    def __init__(self, alphabet):
        self.alphabet = alphabet

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids if i != 3)


def test_utf8_bytes_count_multibyte_characters_and_skip_eos():
    tok = _CharTokenizer({5: "a", 6: "é", 7: "€", 8: " "})
    # "aé€" + EOS + " a": 1 + 2 + 3 bytes, then 2 bytes.
    assert utf8_bytes_of_tokens(tok, [5, 6, 7, 3, 8, 5]) == 8
    assert utf8_bytes_of_tokens(tok, []) == 0


def test_bits_per_byte_by_hand():
    # 10 tokens at ln 2 nats each over 5 bytes: 10 bits / 5 bytes = 2 bits per byte.
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    assert math.isnan(bits_per_byte(1.0, 0))


def test_utf8_bytes_with_the_sentencepiece_tokenizer_match_the_text(tmp_path):
    from csmoe_tokenizer import load_tokenizer
    from csmoe_megatron.data.default_corpus import prepare_default_corpus

    tok = load_tokenizer(prepare_default_corpus().tokenizer_dir)
    texts = ["Return the value of x.", "Naïve café — 3 €"]
    ids = tok.encode(texts[0]) + [tok.eod] + tok.encode(texts[1]) + [tok.eod]
    assert utf8_bytes_of_tokens(tok, ids) == sum(len(t.encode("utf-8")) for t in texts)


def test_split_files_hold_exactly_the_split_parts(tmp_path):
    docs = [[10 + i, 3] for i in range(20)]
    prefix = _write(tmp_path / "corpus", docs)
    ranges = split_document_ranges(20, "80,15,5")
    assert ranges == {"train": (0, 16), "valid": (16, 19), "test": (19, 20)}
    written = write_split_prefixes(prefix, "80,15,5", tmp_path / "held")
    valid = HeldoutWindows([written["valid"]], seq_length=8)
    assert valid.stream.tolist() == [26, 3, 27, 3, 28, 3]
    assert HeldoutWindows([written["test"]], seq_length=8).stream.tolist() == [29, 3]
    assert torch.is_tensor(valid[0]["tokens"])
