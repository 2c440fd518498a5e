"""The built-in stdlib-docstring corpus: prepared once into a cache, then a cache hit."""

from itertools import islice

from csmoe_megatron.data import default_corpus
from csmoe_megatron.data.default_corpus import cache_root, default_corpus_info, prepare_default_corpus
from csmoe_tokenizer import load_tokenizer, validate_indexed_prefix

from conftest import read_indexed


def test_prepare_then_cache_hit(tmp_path, monkeypatch):
    tokenizer_dir, prefix = prepare_default_corpus(tmp_path, vocab_size=1024)
    tok = load_tokenizer(tokenizer_dir)
    info = validate_indexed_prefix(prefix, tok.vocab_size)
    assert tok.vocab_size == 1024 and info.documents > 1000 and info.tokens > 100_000
    assert default_corpus_info(tmp_path, 1024)["documents"] == info.documents
    first_doc = read_indexed(prefix)[0]
    assert first_doc[-1] == tok.eos_id
    assert tok.decode(first_doc[:-1]) == next(default_corpus.stdlib_docstrings())

    marker = tmp_path / "default_corpus" / default_corpus.version_key(1024) / default_corpus.READY_MARKER
    stamp = marker.stat().st_mtime_ns

    def rebuild(*args):
        raise AssertionError("a cache hit must not rebuild the corpus")

    monkeypatch.setattr(default_corpus, "_build", rebuild)
    assert prepare_default_corpus(tmp_path, vocab_size=1024) == (tokenizer_dir, prefix)
    assert marker.stat().st_mtime_ns == stamp


def test_docstring_extraction_is_deterministic():
    first = list(islice(default_corpus.stdlib_docstrings(), 300))
    assert len(first) == len(set(first)) == 300
    assert first == list(islice(default_corpus.stdlib_docstrings(), 300))


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CSMOE_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("CSMOE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "csmoe_megatron"
