"""Train, encode, read back with megatron-core's IndexedDataset, and compare token for token."""

import json

import pytest

from csmoe_tokenizer import EOS_ID, PAD_ID, encode_corpus, load_tokenizer, train_tokenizer, validate_indexed_prefix
from csmoe_tokenizer.cli import main as cli_main

from conftest import SHAKESPEARE, generated_documents, paragraphs, read_indexed, sha256


def test_loaded_tokenizer_has_fixed_special_ids(small_tokenizer):
    tok = load_tokenizer(small_tokenizer)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3) == (PAD_ID, 1, 2, EOS_ID)
    assert tok.vocab_size == 320 == json.loads((small_tokenizer / "tokenizer.json").read_text())["vocab_size"]
    assert tok.eod == tok.eos_id and tok.pad == tok.pad_id  # megatron-core's names
    for text in generated_documents(10) + ["  two  spaces\n\n\ttab", "ünïcödé ✓ 𝔘"]:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} not present (shared data folder absent)")
def test_tinyshakespeare_train_encode_roundtrip(tmp_path):
    tok_dir = tmp_path / "tok"
    assert cli_main(["train", "--input", str(SHAKESPEARE), "--vocab-size", "1000", "--output", str(tok_dir),
                     "--input-sentence-size", "5000", "--threads", "1"]) == 0
    before = sha256(SHAKESPEARE)
    assert cli_main(["encode", "--input", str(SHAKESPEARE), "--tokenizer", str(tok_dir),
                     "--output-prefix", str(tmp_path / "ts"), "--workers", "1", "--quiet"]) == 0
    assert sha256(SHAKESPEARE) == before
    tok = load_tokenizer(tok_dir)
    docs = paragraphs(SHAKESPEARE.read_text(encoding="utf-8"))
    stored = read_indexed(tmp_path / "ts")
    assert len(stored) == len(docs)
    assert stored == [tok.encode(d) + [tok.eos_id] for d in docs]
    assert all(tok.decode(ids[:-1]) == d for ids, d in zip(stored[:200], docs))
    info = validate_indexed_prefix(tmp_path / "ts", tok.vocab_size)
    assert info.documents == len(docs) and info.tokens == sum(map(len, stored))


def test_jsonl_gzip_and_directory_inputs(tmp_path, corpus_dir, small_tokenizer):
    tok = load_tokenizer(small_tokenizer)
    docs = generated_documents()
    expected = [tok.encode(d) + [tok.eos_id] for d in docs]
    hashes = {p.name: sha256(p) for p in corpus_dir.iterdir()}

    for name in ("docs.txt", "docs.jsonl", "more.jsonl.gz"):
        summary = encode_corpus([corpus_dir / name], small_tokenizer, tmp_path / name, progress=False)
        assert summary.documents == len(docs)
        assert read_indexed(tmp_path / name) == expected

    # a directory: recursed in sorted order (docs.jsonl, docs.txt, more.jsonl.gz), hidden files ignored
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "b.txt").write_text("second file\n")
    (tmp_path / "tree" / "a.txt").write_text("first file\n")
    (tmp_path / "tree" / ".hidden.txt").write_text("never read\n")
    (tmp_path / "tree" / "notes.bin").write_bytes(b"\xff\xfe not text")
    encode_corpus([tmp_path / "tree"], small_tokenizer, tmp_path / "tree_out", progress=False)
    assert read_indexed(tmp_path / "tree_out") == [tok.encode("first file") + [3], tok.encode("second file") + [3]]

    encode_corpus([corpus_dir], small_tokenizer, tmp_path / "all", progress=False)
    assert read_indexed(tmp_path / "all") == expected * 3
    assert {p.name: sha256(p) for p in corpus_dir.iterdir()} == hashes  # inputs untouched


def test_output_is_identical_for_any_worker_count(tmp_path, corpus_dir, small_tokenizer):
    inputs = [corpus_dir / "docs.txt", corpus_dir / "docs.jsonl"]
    outputs = []
    for run, workers in enumerate((1, 2, 1)):
        prefix = tmp_path / f"run{run}"
        # tiny batches so that 2 workers really interleave many batches
        encode_corpus(inputs, small_tokenizer, prefix, workers=workers, progress=False, batch_bytes=512)
        outputs.append((sha256(prefix.with_suffix(".bin")), sha256(prefix.with_suffix(".idx"))))
    assert outputs[0] == outputs[1] == outputs[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"run{i}.{e}" for i in range(3) for e in ("bin", "idx")]


def test_txt_doc_modes_and_no_eos(tmp_path, small_tokenizer):
    tok = load_tokenizer(small_tokenizer)
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n\n\nthree\n")
    cases = {
        "line": ["one", "two", "three"],
        "blank-line": ["one\ntwo", "three"],
        "file": ["one\ntwo\n\n\nthree\n"],
    }
    for mode, docs in cases.items():
        encode_corpus([source], small_tokenizer, tmp_path / mode, txt_doc_mode=mode, progress=False)
        assert read_indexed(tmp_path / mode) == [tok.encode(d) + [tok.eos_id] for d in docs]
    encode_corpus([source], small_tokenizer, tmp_path / "noeos", append_eos=False, progress=False)
    assert read_indexed(tmp_path / "noeos") == [tok.encode(d) for d in cases["blank-line"]]


def test_train_output_directory_rules(tmp_path, corpus_dir, capsys):
    args = ["train", "--input", str(corpus_dir / "docs.txt"), "--vocab-size", "300", "--threads", "1"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("someone's file")
    assert cli_main(args + ["--output", str(busy)]) == 2
    assert "non-empty directory" in capsys.readouterr().err and not (busy / "tokenizer.json").exists()
    assert cli_main(args + ["--output", str(busy), "--force"]) == 0
    assert (busy / "keep.txt").read_text() == "someone's file"
    assert load_tokenizer(busy).vocab_size == 300
    # an earlier tokenizer output may be overwritten without --force
    assert cli_main(args[:-4] + ["--vocab-size", "310", "--threads", "1", "--output", str(busy)]) == 0
    assert load_tokenizer(busy).vocab_size == 310
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt", "tokenizer.json", "tokenizer.model"]


def test_train_on_jsonl_gzip_with_unigram(tmp_path, corpus_dir):
    summary = train_tokenizer([corpus_dir / "more.jsonl.gz"], tmp_path / "uni", 300, model_type="unigram", num_threads=1)
    tok = load_tokenizer(tmp_path / "uni")
    assert summary.sentences > 60 and tok.metadata["model_type"] == "unigram"
    text = generated_documents(3)[2]
    assert tok.decode(tok.encode(text)) == text


def test_prepare_goes_from_text_directory_to_training_data(tmp_path, capsys):
    from csmoe_tokenizer.cli import main

    corpus = tmp_path / "texts"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(f"document {i} says hello to the world" for i in range(200)))
    (corpus / "b.txt").write_text("\n\n".join(f"another text number {i}" for i in range(100)))
    out = tmp_path / "prepared"
    assert main(["prepare", "--input", str(corpus), "--vocab-size", "64", "--output", str(out),
                 "--workers", "1", "--quiet", "--no-byte-fallback"]) == 0
    printed = capsys.readouterr().out
    assert f"data.tokenizer={out / 'tokenizer'}" in printed and f"data.prefixes=[{out / 'corpus'}]" in printed
    tokenizer = load_tokenizer(out / "tokenizer")
    documents = read_indexed(out / "corpus")
    assert len(documents) == 300
    assert documents[0] == tokenizer.encode("document 0 says hello to the world") + [tokenizer.eos_id]
