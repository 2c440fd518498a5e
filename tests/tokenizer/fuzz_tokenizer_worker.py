"""Fuzz worker (run in a subprocess by test_fuzz_tokenizer_files, so that a crash or hang shows
as one): mutates a tokenizer directory's files and an encoded dataset's .idx/.bin and prints one
JSON line per case: "refused: <message>", "accepted", or (the test fails on it) "crash: ...".

Accepted cases are used the way training uses them: the tokenizer encodes and decodes a text,
and megatron-core's IndexedDataset reads every sequence with tokens inside the vocabulary's
dtype. A crafted tokenizer.model is also tried with its sha256 updated in tokenizer.json.
"""

import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path

from csmoe_tokenizer import TokenizerUserError, load_tokenizer, validate_indexed_prefix

from tests.fuzz_mutations import mutations


def _use_tokenizer(directory: Path) -> None:
    tok = load_tokenizer(directory)
    tok.decode(tok.encode("Document 1: alpha beta naïve 数据"))


def _use_dataset(prefix: str, vocab_size: int) -> None:
    validate_indexed_prefix(prefix, vocab_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    dataset = IndexedDataset(prefix)
    for i in range(len(dataset)):
        dataset[i]


def _outcome(use, *args) -> str:
    try:
        use(*args)
    except TokenizerUserError as error:
        return "refused: " + str(error)
    except Exception as error:  # anything else is not a clean refusal
        return f"crash: {type(error).__name__}: {error}"
    return "accepted"


def main(tok_dir: Path, prefix: str, work: Path, seed: int, count: int) -> None:
    vocab_size = load_tokenizer(tok_dir).vocab_size
    targets = [("tokenizer.model", False), ("tokenizer.model", True), ("tokenizer.json", False),
               (".idx", False), (".bin", False)]
    for n, (name, resign) in enumerate(targets):
        if name.startswith("."):
            source = Path(prefix + name)
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tok_dir, work)
            source = work / name
        original = source.read_bytes()
        for what, data in mutations(original, seed + n, count):
            source.write_bytes(data)
            if resign:  # the sha256 recorded for the mutated model, as a crafted copy would
                meta = json.loads((work / "tokenizer.json").read_text())
                meta["model_sha256"] = hashlib.sha256(data).hexdigest()
                (work / "tokenizer.json").write_text(json.dumps(meta))
            if name.startswith("."):
                outcome = _outcome(_use_dataset, prefix, vocab_size)
            else:
                outcome = _outcome(_use_tokenizer, work)
            source.write_bytes(original)
            print(json.dumps({"file": name, "resigned": resign, "case": what,
                              "outcome": outcome}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
