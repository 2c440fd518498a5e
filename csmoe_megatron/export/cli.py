"""Entry points: `csmoe-export hf --checkpoint DIR --output OUT` and
`csmoe-import hf --model DIR --config CONFIG --output CKPT`."""

from __future__ import annotations

import argparse
import sys

from ..version import add_version_argument


def run_reporting(action) -> int:
    """Run `action`; a user error (bad input, damaged checkpoint) is one line and exit 2."""
    from ..config.load import ConfigError
    from ..train.checkpoint_files import CheckpointError

    try:
        action()
    except (ConfigError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def export_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="csmoe-export", description=(
        "Write a checkpoint (any TP/PP/EP layout, loaded in one process) as a transformers "
        "MixtralForCausalLM directory. Needs the hf extra."))
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="format", required=True)
    hf = sub.add_parser("hf", help="transformers Mixtral directory (safetensors)")
    hf.add_argument("--checkpoint", required=True,
                    help="run directory, its checkpoints/ directory, or one iter_NNNNNNN")
    hf.add_argument("--output", required=True, help="new directory to write")
    args = parser.parse_args(argv)
    from .hf_export import export_hf

    return run_reporting(lambda: export_hf(args.checkpoint, args.output))


def import_main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="csmoe-import", description=(
        "Read a transformers Mixtral directory into a model checkpoint that csmoe-train starts "
        "from (checkpoint.init_from=CKPT) on any layout. Needs the hf extra."))
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="format", required=True)
    hf = sub.add_parser("hf", help="transformers Mixtral directory (safetensors)")
    hf.add_argument("--model", required=True, help="the Mixtral directory")
    hf.add_argument("--config", required=True,
                    help="our YAML config whose model section describes that model")
    hf.add_argument("--output", required=True, help="new checkpoint directory to write")
    args = parser.parse_args(argv)
    from .hf_import import import_hf

    return run_reporting(lambda: import_hf(args.model, args.config, args.output))
