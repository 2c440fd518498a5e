"""Benchmark `csmoe-tokenizer encode` throughput with 1 and 2 workers.

    python -m csmoe_megatron.bench.preprocess [--input PATH] [--workers 1 2] [--repeats N]

Encodes tinyshakespeare (../shared/data, next to the repository) or, where that is absent,
the built-in default corpus, with a tokenizer trained once into a temporary directory.
Prints a table, then one JSON line: tokens/s per worker count and the ratio to 1 worker.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

from csmoe_tokenizer import encode_corpus, train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared/data/tinyshakespeare.txt"


def _default_input(workdir: Path) -> tuple[Path, str]:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE, "tinyshakespeare"
    from csmoe_megatron.data.default_corpus import prepare_default_corpus

    tokenizer_dir, prefix = prepare_default_corpus()
    return Path(tokenizer_dir).parent / "docstrings.jsonl", "default corpus (stdlib docstrings)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csmoe_megatron.bench.preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="Corpus to encode (default: tinyshakespeare or the default corpus).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="Best of N runs per worker count.")
    parser.add_argument("--copies", type=int, default=10,
                        help="Encode N concatenated copies of the corpus, so worker start-up (included "
                             "in the timing) does not dominate a small corpus.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="csmoe-bench-preprocess-") as tmp:
        workdir = Path(tmp)
        source, label = (args.input, str(args.input)) if args.input else _default_input(workdir)
        train_tokenizer([source], workdir / "tok", args.vocab_size, input_sentence_size=200_000)
        if args.copies > 1:
            data = source.read_bytes()
            source = workdir / f"corpus{''.join(source.suffixes)}"
            source.write_bytes(data.rstrip(b"\n") + b"\n\n" + (data.rstrip(b"\n") + b"\n\n") * (args.copies - 1))
            label += f" x{args.copies}"
        rows = {}
        for workers in args.workers:
            runs = [encode_corpus([source], workdir / "tok", workdir / f"w{workers}", workers=workers, progress=False)
                    for _ in range(args.repeats)]
            rows[workers] = max(runs, key=lambda s: s.tokens_per_s)

    base = rows[args.workers[0]].tokens_per_s
    print(f"corpus: {label} ({rows[args.workers[0]].input_bytes / 1e6:.2f} MB), cpu cores: {os.cpu_count()}, "
          f"best of {args.repeats}, pool start-up included")
    print(f"{'workers':>7} {'documents':>10} {'tokens':>10} {'seconds':>8} {'tokens/s':>12} {'docs/s':>10} {'ratio':>6}")
    for workers, s in rows.items():
        print(f"{workers:>7} {s.documents:>10,} {s.tokens:>10,} {s.seconds:>8.3f} {s.tokens_per_s:>12,.0f} "
              f"{s.documents_per_s:>10,.0f} {s.tokens_per_s / base:>6.2f}")
    result = {f"tokens_per_s_{w}_workers": round(s.tokens_per_s) for w, s in rows.items()}
    if len(rows) > 1:
        last = args.workers[-1]
        result[f"ratio_{last}_vs_{args.workers[0]}"] = round(rows[last].tokens_per_s / base, 3)
    result["corpus"] = label
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
