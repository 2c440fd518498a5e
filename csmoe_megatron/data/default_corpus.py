"""The built-in training corpus: docstrings of the Python standard library.

Every machine that runs this package has them, so the default job needs no download and no
shared data folder. Docstrings are read from the standard library's source files with `ast`
(nothing is imported), in sorted module order, de-duplicated; each docstring is one document.

`prepare_default_corpus()` writes them as JSONL, trains a small BPE tokenizer and encodes the
corpus once, under CACHE/default_corpus/<version-key>/, where CACHE is `cache_dir`, else
$CSMOE_CACHE_DIR, else ~/.cache/csmoe_megatron. A file lock makes concurrent ranks prepare it
once; a READY marker written last makes later calls return at once.
"""

import ast
import fcntl
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

CORPUS_VERSION = 1  # bump when the extraction or tokenizer settings change
DEFAULT_VOCAB_SIZE = 4096
MIN_DOCSTRING_CHARS = 40  # shorter ones ("Return self.") teach little
SKIPPED_PARTS = {"test", "tests", "idle_test"}  # test suites: huge, little prose
READY_MARKER = "READY"


class DefaultCorpus(NamedTuple):
    tokenizer_dir: Path
    prefix: str  # indexed dataset prefix: PREFIX.bin / PREFIX.idx


def cache_root(cache_dir=None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("CSMOE_CACHE_DIR"):
        return Path(os.environ["CSMOE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "csmoe_megatron"


def version_key(vocab_size: int) -> str:
    """Docstrings differ between Python releases, so the release is part of the key."""
    python = ".".join(map(str, sys.version_info[:3]))
    return f"v{CORPUS_VERSION}-{sys.implementation.name}{python}-bpe{vocab_size}"


def stdlib_source_files() -> list[Path]:
    """Source files of `sys.stdlib_module_names`, sorted, test suites left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for name in sorted(sys.stdlib_module_names):
        module, package = root / f"{name}.py", root / name
        if module.is_file():
            files.append(module)
        elif (package / "__init__.py").is_file():
            files.extend(sorted(
                p for p in package.rglob("*.py")
                if not SKIPPED_PARTS.intersection(p.relative_to(root).parts)
            ))
    return files


def stdlib_docstrings() -> Iterator[str]:
    """Module, class and function docstrings, in a deterministic order, each once."""
    seen = set()
    for path in stdlib_source_files():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. a file for another Python version; the rest is plenty
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring and len(docstring) >= MIN_DOCSTRING_CHARS and docstring not in seen:
                    seen.add(docstring)
                    yield docstring


def write_corpus_jsonl(path: Path) -> tuple[int, int]:
    """Write one {"text": docstring} per line; returns (documents, characters)."""
    documents = characters = 0
    with open(path, "w", encoding="utf-8") as out:
        for docstring in stdlib_docstrings():
            out.write(json.dumps({"text": docstring}, ensure_ascii=False) + "\n")
            documents += 1
            characters += len(docstring)
    if documents < 100:
        raise RuntimeError(
            f"Found only {documents} docstrings in the Python standard library at "
            f"{sysconfig.get_paths()['stdlib']} (is it installed without .py sources?). Pass a "
            "corpus of your own instead of the default one."
        )
    return documents, characters


def _build(directory: Path, vocab_size: int) -> dict:
    from csmoe_tokenizer import encode_corpus, train_tokenizer

    timings = {}
    start = time.perf_counter()
    corpus = directory / "docstrings.jsonl"
    documents, characters = write_corpus_jsonl(corpus)
    timings["extract_s"] = time.perf_counter() - start
    tokenizer_dir = directory / "tokenizer"
    train_tokenizer([corpus], tokenizer_dir, vocab_size, model_type="bpe", byte_fallback=True, num_threads=1)
    timings["train_s"] = time.perf_counter() - start - timings["extract_s"]
    summary = encode_corpus([corpus], tokenizer_dir, directory / "docstrings", workers=1, progress=False)
    timings["encode_s"] = time.perf_counter() - start - timings["extract_s"] - timings["train_s"]
    return {
        "tokenizer_dir": "tokenizer", "prefix": "docstrings", "documents": summary.documents,
        "tokens": summary.tokens, "characters": characters, "vocab_size": vocab_size,
        "python": sys.version.split()[0], "seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def prepare_default_corpus(cache_dir=None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                           force: bool = False) -> DefaultCorpus:
    """(tokenizer_dir, prefix) of the built-in corpus, preparing it on first use."""
    directory = cache_root(cache_dir) / "default_corpus" / version_key(vocab_size)
    result = DefaultCorpus(directory / "tokenizer", str(directory / "docstrings"))
    marker = directory / READY_MARKER
    if marker.is_file() and not force:
        return result
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other ranks wait here, then find the marker
        if marker.is_file() and not force:
            return result
        if directory.exists():
            shutil.rmtree(directory)  # a partial build from an interrupted run, or --force
        directory.mkdir()
        info = _build(directory, vocab_size)
        tmp = directory / f".{READY_MARKER}.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, marker)
    return result


def default_corpus_info(cache_dir=None, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Optional[dict]:
    """The READY marker's contents (sizes, timings), or None if not prepared yet."""
    marker = cache_root(cache_dir) / "default_corpus" / version_key(vocab_size) / READY_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None
