"""`csmoe-tokenizer encode`: corpus -> megatron-core indexed dataset (PREFIX.bin / PREFIX.idx).

Streaming: the main process reads raw records in batches and keeps at most a few batches per
worker in flight; workers decode and tokenize; the main process writes results in input order,
so the output is byte-identical whatever --workers is. Outputs are written under temporary
names and renamed only after the whole corpus was encoded without error.
"""

import multiprocessing
import time
import warnings
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from . import encode_worker
from .atomic import remove_quietly, temporary_sibling
from .errors import TokenizerUserError
from .model import load_tokenizer
from .progress import Progress
from .reader import DEFAULT_BATCH_BYTES, CorpusReader, discover_inputs, input_paths_overlap
from .records import located

BATCHES_IN_FLIGHT_PER_WORKER = 4  # bounds memory; enough to keep every worker busy


@dataclass
class EncodeSummary:
    bin_path: Path
    idx_path: Path
    files: int
    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    empty_documents: int = 0
    skipped: Counter = field(default_factory=Counter)  # problem kind -> count (--skip-bad)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def documents_per_s(self) -> float:
        return self.documents / max(self.seconds, 1e-9)

    def describe(self) -> str:
        skipped = ", ".join(f"{kind}: {count}" for kind, count in sorted(self.skipped.items())) or "none"
        return (
            f"encoded {self.documents:,} documents, {self.tokens:,} tokens from {self.files} file(s) "
            f"({self.input_bytes / 1e6:.1f} MB) in {self.seconds:.2f} s: {self.tokens_per_s:,.0f} tokens/s, "
            f"{self.documents_per_s:,.0f} docs/s; empty documents skipped: {self.empty_documents}; "
            f"bad records skipped: {skipped}\n  -> {self.bin_path}\n  -> {self.idx_path}"
        )


def _results_in_order(reader: CorpusReader, workers: int, initargs: tuple):
    """EncodedBatches in input order, with a bounded number of batches in flight."""
    if workers <= 1:
        encode_worker.init_worker(*initargs)
        for batch in reader.batches():
            yield encode_worker.encode_batch(batch)
        return
    # Pool.imap would read ahead without bound (its feeder thread drains the input), so submit
    # by hand and wait on the oldest: ordered, streaming, memory-bounded. A ProcessPoolExecutor
    # (unlike Pool) fails loudly instead of hanging if a worker dies.
    executor = ProcessPoolExecutor(
        workers,
        # spawn: never fork a process that may already hold torch threads
        mp_context=multiprocessing.get_context("spawn"),
        initializer=encode_worker.init_worker,
        initargs=initargs,
    )
    try:
        pending = deque()
        for batch in reader.batches():
            pending.append(executor.submit(encode_worker.encode_batch, batch))
            if len(pending) >= workers * BATCHES_IN_FLIGHT_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise TokenizerUserError(
            "An encode worker process died (out of memory?). Fix: retry with fewer --workers."
        ) from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def encode_corpus(inputs, tokenizer_dir, output_prefix, *, workers: int = 1, json_key: str = "text",
                  txt_doc_mode: str = "blank-line", skip_bad: bool = False, append_eos: bool = True,
                  progress: bool = True, batch_bytes: int = DEFAULT_BATCH_BYTES) -> EncodeSummary:
    """Tokenize `inputs` with the tokenizer in `tokenizer_dir` into OUTPUT_PREFIX.bin/.idx."""
    # megatron-core imports torch; import it only when actually encoding, and without its
    # "Transformer Engine and Apex are not installed" warnings, which do not concern preprocessing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder, get_bin_path, get_idx_path

    if workers < 1:
        raise TokenizerUserError(f"--workers must be at least 1 (got {workers}).")
    tokenizer = load_tokenizer(tokenizer_dir)
    files = discover_inputs(inputs)
    prefix = str(output_prefix)
    bin_path, idx_path = Path(get_bin_path(prefix)), Path(get_idx_path(prefix))
    clash = input_paths_overlap(files, [bin_path, idx_path])
    if clash:
        raise TokenizerUserError(f"Output {clash[0]} is also an input; refusing to overwrite an input. Fix: choose another --output-prefix.")
    bin_path.parent.mkdir(parents=True, exist_ok=True)

    reader = CorpusReader(files, txt_doc_mode, batch_bytes)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    summary = EncodeSummary(bin_path, idx_path, files=len(files), input_bytes=reader.total_bytes)
    meter = Progress("encode", reader.total_bytes, enabled=progress)
    tmp_bin, tmp_idx = temporary_sibling(bin_path), temporary_sibling(idx_path)
    builder = IndexedDatasetBuilder(str(tmp_bin), dtype=dtype)
    initargs = (tokenizer.model_proto, json_key, append_eos, dtype.__name__)
    results = _results_in_order(reader, workers, initargs)
    try:
        for result in results:
            for problem in result.problems:
                if not skip_bad:
                    raise TokenizerUserError(located(result.source, problem))
                summary.skipped[problem.kind] += 1
            offset = 0
            for length in result.lengths.tolist():
                # lengths must be the real count: megatron's GPTDataset loops forever on [0].
                builder.add_document(result.tokens[offset:offset + length], [length])
                offset += length
            summary.documents += len(result.lengths)
            summary.tokens += offset
            summary.empty_documents += result.empty_documents
            meter.update(summary.documents, summary.tokens, reader.bytes_read())
        if summary.documents == 0:
            raise TokenizerUserError(
                f"The inputs hold no documents ({len(files)} file(s), {summary.empty_documents} "
                f"empty documents, skipped: {dict(summary.skipped) or 'none'}). Fix: check --input, "
                "--json-key and --txt-doc-mode."
            )
        builder.finalize(str(tmp_idx))
        tmp_bin.replace(bin_path)
        tmp_idx.replace(idx_path)
    finally:
        results.close()  # stops the workers now, not whenever the generator is collected
        builder.data_file.close()
        remove_quietly(tmp_bin)
        remove_quietly(tmp_idx)
        meter.close()
    summary.seconds = time.perf_counter() - meter.start
    return summary
