"""`csmoe-train --config FILE [--nproc N] [section.key=value ...]`. FILE may also be the name of
a packaged config (`--config cpu_tiny`); `csmoe-train --list-configs` lists them.

Three ways to run, all validating the config and its inputs before anything is written:
  csmoe-train --check [--nproc N] --config FILE ...   validate for N ranks (default: the
      smallest world the layout fits) and print the plan (no workers, no files written)
  csmoe-train --nproc N --config FILE ... validate once, then start N local workers (torchrun)
  torchrun ... -m csmoe_megatron.train --config FILE ...   one worker per rank; on a bad
      config only rank 0 prints the error and every rank exits with 2
Without --nproc and outside torchrun it trains in this one process."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from ..version import add_version_argument

EXIT_CONFIG = 2  # a configuration or input error: one message, nothing written


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="csmoe-train",
        description="Pretrain a megatron-core MoE model (CompeteSMoE or top-K routing) from a "
                    "YAML experiment. Extra arguments section.key=value override the YAML.")
    p.add_argument("--config", help="YAML experiment file, e.g. configs/cpu_tiny.yaml, or the "
                                    "name of a packaged config, e.g. cpu_tiny")
    p.add_argument("--list-configs", action="store_true",
                   help="list the configs shipped with the package and exit")
    p.add_argument("--list-keys", action="store_true",
                   help="list every config key with its default and meaning, and exit")
    p.add_argument("--nproc", type=_positive, metavar="N",
                   help="start N worker processes on this machine (torchrun --standalone); "
                        "with --check: the number of ranks to check for")
    p.add_argument("--check", action="store_true",
                   help="validate the config and its inputs, print the plan (layout, "
                        "parameters, tokens and FLOPs a step, memory per GPU) and exit; "
                        "starts no workers and writes nothing")
    p.add_argument("--skip-inputs", action="store_true",
                   help="with --check: leave the tokenizer, data and run directory unchecked "
                        "(paths that exist only where the job runs, e.g. inside a container)")
    add_version_argument(p)
    p.add_argument("overrides", nargs="*", help="overrides such as train.steps=20 parallel.expert=2")
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_configs:
        from ..config.packaged import listing

        print(listing())
        return 0
    if args.list_keys:
        from ..config.reference import as_text

        print(as_text(), end="")
        return 0
    if args.config is None:
        parser.error("--config is required (a YAML file or a packaged config: see --list-configs)")
    if args.skip_inputs and not args.check:
        parser.error("--skip-inputs goes with --check (a run always checks its inputs)")
    worker = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # started by torchrun
    if worker and args.nproc and not args.check:
        parser.error("--nproc starts workers itself: run it without torchrun")
    rank = os.environ.get("RANK", "0") if worker else "0"

    cfg = _validated(args, worker, rank)
    if cfg is None:
        return EXIT_CONFIG
    if args.check:
        return _print_plan(cfg, _world_size(args, worker, cfg))
    if args.nproc and not worker:
        from .spawn import run_local_workers

        rc = run_local_workers(args.nproc, args.config, args.overrides)
        return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention
    return _train(cfg, rank)


def _world_size(args, worker: bool, cfg) -> int:
    if args.nproc:
        return args.nproc
    if worker:
        return int(os.environ["WORLD_SIZE"])
    if args.check:
        from ..config.validate import smallest_world

        return smallest_world(cfg)
    return 1


def _validated(args, worker: bool, rank: str):
    """The loaded config, its schedule fitted to the run and everything checked (config,
    numeric ranges, layout against the world size, tokenizer, data, run directory); None
    after printing the one error (rank 0 only)."""
    from ..config import ConfigError, load_config, validate
    from ..config.inputs import check_inputs
    from ..config.validate import shorten_warmup
    from .spawn import VALIDATED_ENV

    speak = rank == "0"
    try:
        cfg = load_config(args.config, args.overrides)
        note = shorten_warmup(cfg)
        world = _world_size(args, worker, cfg)
        validate(cfg, world)
        if not (args.check and args.skip_inputs):
            check_inputs(cfg, world)
    except ConfigError as e:
        if speak:
            hint = ""
            if "world size" in str(e) and not worker and not args.nproc:
                hint = " (csmoe-train --nproc N starts N processes on this machine)"
            print(f"csmoe-train: configuration error: {e}{hint}", file=sys.stderr)
        elif worker:
            # The other ranks of a refused launch let rank 0 exit first: torchrun ends the
            # job at the first failure, and an early exit here could end rank 0 before its
            # message is out. torchrun's teardown ends this wait; the bound is for safety.
            time.sleep(60)
        return None
    if note and speak and os.environ.get(VALIDATED_ENV) != "1":
        print(f"csmoe-train: {note}", file=sys.stderr)
    return cfg


def _print_plan(cfg, world: int) -> int:
    from ..config import ConfigError
    from .plan import build_plan, format_plan

    try:
        print(format_plan(build_plan(cfg, world)))
    except ConfigError as e:  # --skip-inputs: the vocabulary is the tokenizer's, unread
        print(f"config valid for {world} ranks (inputs not checked); no plan: {e}")
    return 0


def _train(cfg, rank: str) -> int:
    from .. import compat
    from ..config import ConfigError

    compat.quiet_expected_warnings()
    from .loop import run_training

    try:
        run_training(cfg)
    except ConfigError as e:
        if rank == "0":
            print(f"csmoe-train: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print(f"csmoe-train[rank {rank}]: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one paragraph on the console, the traceback in the run dir
        log = Path(cfg.run.dir) / f"error_rank{rank}.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            where = f" (traceback: {log})"
        except OSError:
            where = ""
            traceback.print_exc()
        print(f"csmoe-train[rank {rank}]: {type(e).__name__}: {e}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # dist_checkpointing spawns processes: the guard is required
    sys.exit(main())
