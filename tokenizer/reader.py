"""Find input files and stream their documents as raw byte records, in a deterministic order.

Formats, chosen by file name (after removing a .gz/.bz2/.xz compression suffix):
  *.jsonl, *.ndjson   one JSON object per line; the document is the value of --json-key.
  anything else       plain text, split into documents by --txt-doc-mode:
                        blank-line  paragraphs separated by blank lines (default)
                        line        every non-blank line is a document
                        file        the whole file is one document
Directories are searched recursively in sorted order for *.txt, *.text, *.md, *.jsonl and
*.ndjson files (optionally compressed); hidden files and folders are ignored.

Records stay bytes here; decoding (UTF-8, JSON) happens in the encode workers so the reading
process does as little as possible.
"""

import bz2
import gzip
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .errors import TokenizerUserError

TXT_DOC_MODES = ("blank-line", "line", "file")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DIRECTORY_SUFFIXES = (".txt", ".text", ".md") + JSONL_SUFFIXES
COMPRESSORS = {  # each wraps the raw file object, whose tell() then measures progress
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
}
DEFAULT_BATCH_BYTES = 1 << 17


@dataclass(frozen=True)
class InputFile:
    path: Path
    is_jsonl: bool
    compression: str  # "", ".gz", ".bz2" or ".xz"
    size: int  # bytes on disk, the unit of progress


@dataclass
class RawBatch:
    """Consecutive documents of one file: `records[i]` starts on 1-based line `lines[i]`."""

    source: str
    is_jsonl: bool
    lines: list = field(default_factory=list)
    records: list = field(default_factory=list)
    empty_file: bool = False  # the file held no document at all
    nbytes: int = 0


def split_suffixes(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix) of a file name, both lower case."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSORS else ""
    return (suffixes[-1] if suffixes else ""), compression


def discover_inputs(paths: Iterable) -> list[InputFile]:
    """Expand files and directories into a de-duplicated, ordered list of input files."""
    found, seen = [], set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            candidates = sorted(
                p for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and split_suffixes(p)[0] in DIRECTORY_SUFFIXES
            )
            if not candidates:
                raise TokenizerUserError(
                    f"Input directory {path} contains no {'/'.join(DIRECTORY_SUFFIXES)} files "
                    "(optionally .gz/.bz2/.xz compressed). Fix: point --input at the files or at "
                    "a directory holding them."
                )
        elif path.is_file():
            candidates = [path]
        else:
            raise TokenizerUserError(f"Input {path} does not exist. Fix: check the --input path.")
        for candidate in candidates:
            key = candidate.resolve()
            if key in seen:
                continue
            seen.add(key)
            suffix, compression = split_suffixes(candidate)
            found.append(InputFile(candidate, suffix in JSONL_SUFFIXES, compression, candidate.stat().st_size))
    if not found:
        raise TokenizerUserError("No input files given. Fix: pass --input PATH (files or directories).")
    return found


class CorpusReader:
    """Streams RawBatches from the input files; `bytes_read()` reports progress in disk bytes."""

    def __init__(self, files: list[InputFile], txt_doc_mode: str = "blank-line",
                 batch_bytes: int = DEFAULT_BATCH_BYTES):
        if txt_doc_mode not in TXT_DOC_MODES:
            raise TokenizerUserError(f"Unknown --txt-doc-mode {txt_doc_mode!r}; use one of {TXT_DOC_MODES}.")
        self.files = files
        self.txt_doc_mode = txt_doc_mode
        self.batch_bytes = batch_bytes
        self.total_bytes = sum(f.size for f in files)
        self._finished_bytes = 0
        self._current = None  # raw handle of the file being read

    def bytes_read(self) -> int:
        current = 0
        if self._current is not None and not self._current.closed:
            current = self._current.tell()
        return self._finished_bytes + current

    def batches(self) -> Iterator[RawBatch]:
        for input_file in self.files:
            yield from self._file_batches(input_file)
            self._finished_bytes += input_file.size

    def _file_batches(self, input_file: InputFile) -> Iterator[RawBatch]:
        source = str(input_file.path)
        try:
            with open(input_file.path, "rb") as raw:
                self._current = raw
                stream = COMPRESSORS[input_file.compression](raw) if input_file.compression else raw
                with stream:
                    batch = RawBatch(source, input_file.is_jsonl)
                    produced = False
                    for line_number, record in self._records(stream, input_file.is_jsonl):
                        batch.lines.append(line_number)
                        batch.records.append(record)
                        batch.nbytes += len(record)
                        if batch.nbytes >= self.batch_bytes:
                            yield batch
                            produced = True
                            batch = RawBatch(source, input_file.is_jsonl)
                    if batch.records or not produced:
                        batch.empty_file = not produced and not batch.records
                        yield batch
        except (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError) as error:
            raise TokenizerUserError(
                f"{source}: cannot read this {input_file.compression or 'file'} ({error}). Fix: the "
                "file is probably truncated or not really compressed that way; re-create it or "
                "remove it from the inputs."
            ) from None
        finally:
            self._current = None

    def _records(self, stream, is_jsonl: bool) -> Iterator[tuple[int, bytes]]:
        mode = "line" if is_jsonl else self.txt_doc_mode
        if mode == "file":
            content = stream.read()
            if content.strip():
                yield 1, content
        elif mode == "line":
            for number, line in enumerate(stream, 1):
                if line.strip():
                    yield number, line.rstrip(b"\r\n")
        else:
            paragraph, start = [], 0
            for number, line in enumerate(stream, 1):
                if line.strip():
                    if not paragraph:
                        start = number
                    paragraph.append(line)
                elif paragraph:
                    yield start, b"".join(paragraph).rstrip(b"\r\n")
                    paragraph = []
            if paragraph:
                yield start, b"".join(paragraph).rstrip(b"\r\n")


def input_paths_overlap(files: list[InputFile], outputs: Iterable[Path]) -> list[Path]:
    """Output paths that are also inputs (writing them would modify an input)."""
    inputs = {f.path.resolve() for f in files}
    return [p for p in outputs if Path(os.path.abspath(p)).resolve() in inputs]
