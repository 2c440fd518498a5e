"""Every bad input stops with one clear message naming file (and line), and writes nothing;
--skip-bad skips and counts instead."""

import bz2
import json
import lzma
import re

import pytest

from csmoe_tokenizer import TokenizerUserError, encode_corpus, load_tokenizer, train_tokenizer, validate_indexed_prefix
from csmoe_tokenizer.cli import main as cli_main

from conftest import read_indexed, sha256


@pytest.fixture
def bad_inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.txt").write_text("a good document\n\nanother good one\n")
    (src / "empty.txt").write_text("\n  \n")
    (src / "latin1.txt").write_bytes(b"fine line\nstill fine\nna\xefve\n")
    (src / "broken.jsonl").write_text('{"text": "ok"}\n\n{"text": "ok too"}\n{not json\n{"text": "last"}\n')
    (src / "nokey.jsonl").write_text('{"text": "ok"}\n{"body": "wrong key"}\n{"text": 7}\n')
    return src


@pytest.mark.parametrize("name, location, words", [
    ("empty.txt", "empty.txt:", "file is empty"),
    ("latin1.txt", "latin1.txt:3:", "invalid UTF-8"),
    ("broken.jsonl", "broken.jsonl:4:", "not valid JSON"),
    ("nokey.jsonl", "nokey.jsonl:2:", "no key 'text'"),
])
def test_bad_input_error_names_file_and_line(tmp_path, bad_inputs, small_tokenizer, capsys, name, location, words):
    inputs = [bad_inputs / "good.txt", bad_inputs / name]
    hashes = {p: sha256(p) for p in inputs}
    out = tmp_path / "out"
    out.mkdir()
    code = cli_main(["encode", "--input", *map(str, inputs), "--tokenizer", str(small_tokenizer),
                     "--output-prefix", str(out / "ds"), "--workers", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and location in err and words in err and "Fix:" in err and "--skip-bad" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []  # nothing written, no temporary left behind
    assert {p: sha256(p) for p in inputs} == hashes
    with pytest.raises(TokenizerUserError, match=location):
        train_tokenizer(inputs, tmp_path / "tok", 300, num_threads=1)
    assert not (tmp_path / "tok").exists()


def test_value_not_a_string(tmp_path, small_tokenizer):
    source = tmp_path / "n.jsonl"
    source.write_text('{"text": 7}\n')
    with pytest.raises(TokenizerUserError, match=r"n\.jsonl:1: the value of 'text' is a JSON int"):
        encode_corpus([source], small_tokenizer, tmp_path / "o", progress=False)


def test_skip_bad_counts_and_keeps_good_documents(tmp_path, bad_inputs, small_tokenizer):
    summary = encode_corpus([bad_inputs], small_tokenizer, tmp_path / "ds", skip_bad=True, progress=False)
    assert dict(summary.skipped) == {"empty-file": 1, "invalid-utf8": 1, "not-json": 1, "missing-key": 1, "not-string": 1}
    tok = load_tokenizer(small_tokenizer)
    # sorted directory order: broken.jsonl, empty.txt, good.txt, latin1.txt, nokey.jsonl
    docs = ["ok", "ok too", "last", "a good document", "another good one", "ok"]
    assert read_indexed(tmp_path / "ds") == [tok.encode(d) + [tok.eos_id] for d in docs]
    trained = train_tokenizer([bad_inputs], tmp_path / "tok", 280, skip_bad=True, num_threads=1)
    assert dict(trained.skipped) == dict(summary.skipped)


def test_empty_corpus_is_an_error_even_with_skip_bad(tmp_path, small_tokenizer):
    (tmp_path / "e.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(TokenizerUserError, match="no documents"):
        encode_corpus([tmp_path / "e.jsonl"], small_tokenizer, tmp_path / "o", skip_bad=True, progress=False)
    with pytest.raises(TokenizerUserError, match="no text to train on"):
        train_tokenizer([tmp_path / "e.jsonl"], tmp_path / "tok", 300, num_threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]


def test_missing_paths_and_corrupt_compression(tmp_path, small_tokenizer):
    with pytest.raises(TokenizerUserError, match="does not exist"):
        encode_corpus([tmp_path / "nope.txt"], small_tokenizer, tmp_path / "o", progress=False)
    (tmp_path / "d").mkdir()
    with pytest.raises(TokenizerUserError, match="contains no"):
        encode_corpus([tmp_path / "d"], small_tokenizer, tmp_path / "o", progress=False)
    (tmp_path / "bad.txt.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(TokenizerUserError, match=r"bad\.txt\.gz: cannot read"):
        encode_corpus([tmp_path / "bad.txt.gz"], small_tokenizer, tmp_path / "o", progress=False)


def test_bz2_and_xz_inputs(tmp_path, small_tokenizer):
    tok = load_tokenizer(small_tokenizer)
    (tmp_path / "a.txt.bz2").write_bytes(bz2.compress(b"from bz2\n"))
    (tmp_path / "b.jsonl.xz").write_bytes(lzma.compress(json.dumps({"t": "from xz"}).encode() + b"\n"))
    encode_corpus([tmp_path / "a.txt.bz2"], small_tokenizer, tmp_path / "a", progress=False)
    encode_corpus([tmp_path / "b.jsonl.xz"], small_tokenizer, tmp_path / "b", json_key="t", progress=False)
    assert read_indexed(tmp_path / "a") == [tok.encode("from bz2") + [3]]
    assert read_indexed(tmp_path / "b") == [tok.encode("from xz") + [3]]


def test_output_may_not_overwrite_an_input(tmp_path, small_tokenizer):
    (tmp_path / "x.bin").write_text("precious")
    with pytest.raises(TokenizerUserError, match="also an input"):
        encode_corpus([tmp_path / "x.bin"], small_tokenizer, tmp_path / "x", progress=False)
    assert (tmp_path / "x.bin").read_text() == "precious"


def test_invalid_tokenizer_dirs(tmp_path, small_tokenizer, corpus_dir, capsys):
    with pytest.raises(TokenizerUserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TokenizerUserError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path / "plain")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "tokenizer.json").write_bytes((small_tokenizer / "tokenizer.json").read_bytes())
    (tampered / "tokenizer.model").write_bytes((small_tokenizer / "tokenizer.model").read_bytes()[:-10])
    with pytest.raises(TokenizerUserError, match="does not match the sha256"):
        load_tokenizer(tampered)
    assert cli_main(["encode", "--input", str(corpus_dir / "docs.txt"), "--tokenizer", str(tmp_path / "plain"),
                     "--output-prefix", str(tmp_path / "o")]) == 2
    assert "tokenizer.json" in capsys.readouterr().err


def test_validate_indexed_prefix_names_the_bad_file(tmp_path, corpus_dir, small_tokenizer, capsys):
    prefix = tmp_path / "ds"
    encode_corpus([corpus_dir / "docs.txt"], small_tokenizer, prefix, progress=False)
    assert validate_indexed_prefix(prefix).documents == 60
    assert cli_main(["validate", str(prefix), "--tokenizer", str(small_tokenizer)]) == 0
    assert "60 documents" in capsys.readouterr().out
    bin_path = tmp_path / "ds.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(TokenizerUserError, match=r"ds\.bin is \d+ bytes but .*ds\.idx describes"):
        validate_indexed_prefix(prefix)
    (tmp_path / "ds.idx").unlink()
    with pytest.raises(TokenizerUserError, match=r"ds\.idx missing"):
        validate_indexed_prefix(prefix)


@pytest.mark.parametrize("vocab_size, words", [
    (300, ["--vocab-size 300 is too small", "pieces for its characters", "--character-coverage"]),
    (5000, ["--vocab-size 5000 is too large", "at most"]),
])
def test_a_vocabulary_that_does_not_fit_the_corpus_names_our_flags(tmp_path, vocab_size, words):
    # 400 distinct characters (CJK), each needed at full coverage, + 256 byte pieces.
    text = "\n\n".join("".join(chr(0x4E00 + (i * 7 + j) % 400) for j in range(60)) for i in range(80))
    (tmp_path / "cjk.txt").write_text(text + "\n", encoding="utf-8")
    with pytest.raises(TokenizerUserError) as caught:
        train_tokenizer([tmp_path / "cjk.txt"], tmp_path / "tok", vocab_size=vocab_size,
                        character_coverage=1.0)
    message = str(caught.value)
    assert all(w in message for w in words), message
    needed = re.search(r"needs (\d+) pieces", message)
    assert needed is None or int(needed.group(1)) >= 400 + 256, message
    assert "--character_coverage" not in message and not (tmp_path / "tok" / "tokenizer.model").exists()
