"""`csmoe-tokenizer train`: train a SentencePiece model into a tokenizer directory.

The model round-trips text exactly: identity normalization, whitespace kept, "\n" is a piece of
its own, digits split, and (by default) byte fallback so no character is ever <unk>.
"""

import io
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import sentencepiece

from .atomic import remove_quietly, temporary_sibling, write_bytes_atomically
from .errors import TokenizerUserError
from .metadata import FORMAT, METADATA_FILE, MODEL_FILE, SPECIAL_IDS, is_tokenizer_dir, metadata_json, sha256_of
from .reader import CorpusReader, discover_inputs
from .records import BadRecord, empty_file_problem, located, record_text

MODEL_TYPES = ("bpe", "unigram")
MAX_SENTENCE_CHARS = 16384  # longer lines are cut; SentencePiece would silently drop them


@dataclass
class TrainSummary:
    directory: Path
    vocab_size: int
    sentences: int
    seconds: float
    skipped: Counter = field(default_factory=Counter)

    def describe(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"trained a {self.vocab_size}-token tokenizer on {self.sentences:,} lines in "
            f"{self.seconds:.1f} s (bad records skipped: {skipped})\n  -> {self.directory}"
        )


def check_output_dir(directory: Path, force: bool) -> None:
    """Refuse to write into a non-empty directory that is not an earlier tokenizer output."""
    if directory.exists() and not directory.is_dir():
        raise TokenizerUserError(f"--output {directory} exists and is not a directory. Fix: choose another --output.")
    if directory.is_dir() and any(directory.iterdir()) and not is_tokenizer_dir(directory) and not force:
        raise TokenizerUserError(
            f"--output {directory} is a non-empty directory that does not hold a tokenizer. Fix: "
            "choose an empty or new directory, or pass --force to write tokenizer.model and "
            "tokenizer.json into it anyway (other files are left alone)."
        )


class _TrainingLines:
    """The lines SentencePiece trains on; remembers a user error to re-raise after training.

    (An exception raised inside SentencePiece's sentence_iterator does not come back cleanly.)
    """

    def __init__(self, reader: CorpusReader, json_key: str, skip_bad: bool):
        self.reader, self.json_key, self.skip_bad = reader, json_key, skip_bad
        self.count = 0
        self.skipped = Counter()
        self.error = None

    def _problem(self, source: str, problem: BadRecord) -> bool:
        if not self.skip_bad:
            self.error = TokenizerUserError(located(source, problem))
            return False
        self.skipped[problem.kind] += 1
        return True

    def __iter__(self) -> Iterator[str]:
        try:
            for batch in self.reader.batches():
                if batch.empty_file and not self._problem(batch.source, empty_file_problem()):
                    return
                for line, record in zip(batch.lines, batch.records):
                    try:
                        text = record_text(record, line, batch.is_jsonl, self.json_key)
                    except BadRecord as problem:
                        if not self._problem(batch.source, problem):
                            return
                        continue
                    for sentence in text.split("\n"):
                        if sentence.strip():
                            self.count += 1
                            yield sentence[:MAX_SENTENCE_CHARS]
        except TokenizerUserError as error:
            self.error = error


def train_tokenizer(inputs, output_dir, vocab_size: int, *, model_type: str = "bpe",
                    character_coverage: float = 0.9995, byte_fallback: bool = True,
                    input_sentence_size: int = 0, json_key: str = "text",
                    txt_doc_mode: str = "blank-line", seed: int = 0, skip_bad: bool = False,
                    force: bool = False, num_threads: int = 0) -> TrainSummary:
    """Train a tokenizer on `inputs` and write OUTPUT_DIR/tokenizer.model + tokenizer.json."""
    output_dir = Path(output_dir)
    if model_type not in MODEL_TYPES:
        raise TokenizerUserError(f"Unknown --model-type {model_type!r}; use one of {MODEL_TYPES}.")
    if vocab_size < len(SPECIAL_IDS) + 1:
        raise TokenizerUserError(f"--vocab-size {vocab_size} is too small.")
    check_output_dir(output_dir, force)
    files = discover_inputs(inputs)
    lines = _TrainingLines(CorpusReader(files, txt_doc_mode), json_key, skip_bad)
    start = time.perf_counter()
    sentencepiece.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback, input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True, max_sentence_length=4 * MAX_SENTENCE_CHARS,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=True, user_defined_symbols=["\n"],
            pad_id=SPECIAL_IDS["pad"], unk_id=SPECIAL_IDS["unk"], bos_id=SPECIAL_IDS["bos"],
            eos_id=SPECIAL_IDS["eos"], num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as error:
        if lines.error:
            raise lines.error from None
        if lines.count == 0:
            raise TokenizerUserError(
                f"The inputs hold no text to train on ({len(files)} file(s)). Fix: check --input, "
                "--json-key and --txt-doc-mode."
            ) from None
        raise TokenizerUserError(_training_failure(str(error), vocab_size, character_coverage)) \
            from None
    if lines.error:
        raise lines.error
    proto = model.getvalue()
    metadata = {
        "format": FORMAT,
        "model_file": MODEL_FILE,
        "model_sha256": sha256_of(proto),
        "model_type": model_type,
        "vocab_size": sentencepiece.SentencePieceProcessor(model_proto=proto).vocab_size(),
        "special_ids": SPECIAL_IDS,
        "byte_fallback": byte_fallback,
        "character_coverage": character_coverage,
        "normalization": "identity",
        "training": {
            "inputs": [str(f.path) for f in files], "lines": lines.count, "json_key": json_key,
            "txt_doc_mode": txt_doc_mode, "input_sentence_size": input_sentence_size,
            "seed": seed, "skipped": dict(lines.skipped),
        },
        "sentencepiece_version": sentencepiece.__version__,
    }
    _write_tokenizer_dir(output_dir, proto, metadata_json(metadata))
    return TrainSummary(output_dir, metadata["vocab_size"], lines.count, time.perf_counter() - start, lines.skipped)


def _write_tokenizer_dir(directory: Path, proto: bytes, metadata: bytes) -> None:
    """New directory: build beside it and rename. Existing one: replace model, then metadata last."""
    if directory.is_dir():
        write_bytes_atomically(directory / MODEL_FILE, proto)
        write_bytes_atomically(directory / METADATA_FILE, metadata)
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(directory)
    try:
        staging.mkdir()
        (staging / MODEL_FILE).write_bytes(proto)
        (staging / METADATA_FILE).write_bytes(metadata)
        os.rename(staging, directory)
    except OSError as error:
        raise TokenizerUserError(f"Cannot create tokenizer directory {directory}: {error}.") from None
    finally:
        remove_quietly(staging)


def _training_failure(message: str, vocab_size: int, character_coverage: float) -> str:
    """SentencePiece's failure in our flags' words (its own text names its own flags)."""
    chars = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if chars:
        return (f"--vocab-size {vocab_size} is too small: the corpus needs {chars.group(1)} pieces "
                f"for its characters at --character-coverage {character_coverage} (with "
                f"--byte-fallback's 256 byte pieces), plus the special pieces. Fix: raise "
                f"--vocab-size above that, or lower --character-coverage so that rare characters "
                f"become byte pieces.")
    high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", message)
    if high:
        return (f"--vocab-size {vocab_size} is too large for this much text: at most {high.group(1)} "
                f"pieces can be learned from it. Fix: use --vocab-size {high.group(1)} or less, or "
                f"train on more text.")
    detail = message.strip().split("] ")[-1]
    return (f"SentencePiece training failed: {detail} Fix: check --vocab-size (too large for this "
            f"much text, or too small for the corpus' characters and --byte-fallback's 256 byte "
            f"pieces) and --character-coverage.")
