"""Shared fixtures: a small generated corpus and a tokenizer trained on it once per session."""

import hashlib
import json
import re
import warnings
from pathlib import Path

import pytest

from csmoe_tokenizer import train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared/data/tinyshakespeare.txt"
BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


def paragraphs(text: str) -> list[str]:
    """Documents of a text file in blank-line mode, computed independently of the reader."""
    return [p.strip("\r\n") for p in BLANK_LINES.split(text) if p.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_indexed(prefix) -> list[list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))]


def generated_documents(count: int = 60) -> list[str]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu naïve café 数据 🎉".split()
    docs = []
    for i in range(count):
        lines = [" ".join(words[(i * 7 + j * 3 + k) % len(words)] for k in range(5 + (i + j) % 9)) for j in range(1 + i % 4)]
        docs.append(f"Document {i}: " + "\n".join(lines))
    return docs


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """docs.txt (blank-line separated), docs.jsonl and docs.jsonl.gz with the same documents."""
    import gzip

    root = tmp_path_factory.mktemp("corpus")
    docs = generated_documents()
    (root / "docs.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    jsonl = "".join(json.dumps({"id": i, "text": d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs))
    (root / "docs.jsonl").write_text(jsonl, encoding="utf-8")
    with gzip.open(root / "more.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(jsonl)
    return root


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, corpus_dir) -> Path:
    out = tmp_path_factory.mktemp("tok") / "small"
    train_tokenizer([corpus_dir / "docs.txt"], out, vocab_size=320, input_sentence_size=2000, num_threads=1)
    return out
