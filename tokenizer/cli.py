"""`csmoe-tokenizer`: train a tokenizer, encode a corpus, check an encoded dataset."""

import argparse
import os
import sys

from csmoe_megatron.version import add_version_argument

from .errors import TokenizerUserError
from .reader import TXT_DOC_MODES

INPUT_HELP = (
    "Input files or directories (repeatable). *.jsonl/*.ndjson are JSON lines (text in --json-key); "
    "other files are plain UTF-8 text split by --txt-doc-mode. Directories are searched recursively "
    "in sorted order for .txt/.text/.md/.jsonl/.ndjson files; .gz/.bz2/.xz are decompressed by extension."
)
DOC_MODE_HELP = (
    "How plain text files are split into documents: 'blank-line' (default) = paragraphs separated "
    "by blank lines; 'line' = every non-blank line; 'file' = the whole file is one document."
)


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH", help=INPUT_HELP)
    parser.add_argument("--json-key", default="text", help="JSONL field holding the document text (default: text).")
    parser.add_argument("--txt-doc-mode", choices=TXT_DOC_MODES, default="blank-line", help=DOC_MODE_HELP)
    parser.add_argument("--skip-bad", action="store_true",
                        help="Skip (and count) empty files, invalid UTF-8, non-JSON lines and lines missing "
                             "--json-key instead of stopping with an error.")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-size", type=int, required=True, metavar="N")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    parser.add_argument("--character-coverage", type=float, default=0.9995, metavar="F",
                        help="Share of characters covered by the vocabulary (default 0.9995).")
    parser.add_argument("--byte-fallback", action=argparse.BooleanOptionalAction, default=True,
                        help="Encode uncovered characters as UTF-8 bytes instead of <unk> (default on).")
    parser.add_argument("--input-sentence-size", type=int, default=0, metavar="N",
                        help="Train on a random sample of N lines (0 = all); use e.g. 2000000 for huge corpora.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the line sampling.")
    parser.add_argument("--threads", type=int, default=0, help="SentencePiece trainer threads (0 = all cores).")
    parser.add_argument("--force", action="store_true",
                        help="Write into a non-empty output directory that does not already hold a tokenizer.")


def _add_encode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1))),
                        help="Tokenizer processes (default: number of cores, at most 8).")
    parser.add_argument("--append-eos", action=argparse.BooleanOptionalAction, default=True,
                        help="Append EOS after every document (default on).")
    parser.add_argument("--quiet", action="store_true", help="No progress lines on stderr.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csmoe-tokenizer", description=__doc__)
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="Train a SentencePiece tokenizer into a directory.",
                                description="Writes DIR/tokenizer.model and DIR/tokenizer.json (vocab size and "
                                            "the fixed special ids pad=0 unk=1 bos=2 eos=3).")
    _add_input_options(train)
    train.add_argument("--output", required=True, metavar="DIR")
    _add_train_options(train)

    encode = commands.add_parser("encode", help="Tokenize a corpus into PREFIX.bin / PREFIX.idx.",
                                 description="Writes a megatron-core indexed dataset, one document per input "
                                             "document (EOS appended). Output is identical for any --workers.")
    _add_input_options(encode)
    encode.add_argument("--tokenizer", required=True, metavar="DIR", help="A directory written by `train`.")
    encode.add_argument("--output-prefix", required=True, metavar="PREFIX", help="Writes PREFIX.bin and PREFIX.idx.")
    _add_encode_options(encode)

    prepare = commands.add_parser(
        "prepare", help="train + encode in one step: a directory of text to training data.",
        description="Trains a tokenizer into DIR/tokenizer and encodes the same inputs into "
                    "DIR/corpus.bin/.idx, then prints the csmoe-train overrides that use them.")
    _add_input_options(prepare)
    prepare.add_argument("--output", required=True, metavar="DIR")
    _add_train_options(prepare)
    _add_encode_options(prepare)

    validate = commands.add_parser("validate", help="Check that PREFIX.bin / PREFIX.idx exist and agree.")
    validate.add_argument("prefix", metavar="PREFIX")
    validate.add_argument("--tokenizer", metavar="DIR", help="Also check the token dtype fits this tokenizer.")
    return parser


def _train(args: argparse.Namespace, output_dir):
    from .train import train_tokenizer

    return train_tokenizer(
        args.input, output_dir, args.vocab_size, model_type=args.model_type,
        character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
        input_sentence_size=args.input_sentence_size, json_key=args.json_key,
        txt_doc_mode=args.txt_doc_mode, seed=args.seed, skip_bad=args.skip_bad,
        force=args.force, num_threads=args.threads,
    )


def _encode(args: argparse.Namespace, tokenizer_dir, output_prefix):
    from .encode import encode_corpus

    return encode_corpus(
        args.input, tokenizer_dir, output_prefix, workers=args.workers,
        json_key=args.json_key, txt_doc_mode=args.txt_doc_mode, skip_bad=args.skip_bad,
        append_eos=args.append_eos, progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> None:
    if args.command == "train":
        summary = _train(args, args.output)
    elif args.command == "encode":
        summary = _encode(args, args.tokenizer, args.output_prefix)
    elif args.command == "prepare":
        from pathlib import Path

        out = Path(args.output).resolve()
        print(_train(args, out / "tokenizer").describe())
        print(_encode(args, out / "tokenizer", out / "corpus").describe())
        print(f"train on it with: csmoe-train --config CONFIG data.source=indexed "
              f"data.tokenizer={out / 'tokenizer'} data.prefixes=[{out / 'corpus'}]")
        return
    else:
        from .indexed import validate_indexed_prefix
        from .model import load_tokenizer

        vocab_size = load_tokenizer(args.tokenizer).vocab_size if args.tokenizer else None
        info = validate_indexed_prefix(args.prefix, vocab_size)
        print(f"{info.prefix}: ok, {info.documents:,} documents, {info.tokens:,} tokens "
              f"({info.dtype.__name__})")
        return
    print(summary.describe())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except TokenizerUserError as error:
        print(f"csmoe-tokenizer {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"csmoe-tokenizer {args.command}: interrupted; no output was written.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
