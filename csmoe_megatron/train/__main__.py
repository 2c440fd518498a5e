"""`csmoe-train --config FILE [section.key=value ...]`; under torchrun, one process per rank:
`torchrun --nproc-per-node N -m csmoe_megatron.train --config FILE ...`. FILE may also be the
name of a packaged config (`--config cpu_tiny`); `csmoe-train --list-configs` lists them."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from ..version import add_version_argument


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="csmoe-train",
        description="Pretrain a megatron-core MoE model (CompeteSMoE or top-K routing) from a "
                    "YAML experiment. Extra arguments section.key=value override the YAML.")
    p.add_argument("--config", help="YAML experiment file, e.g. configs/cpu_tiny.yaml, or the "
                                    "name of a packaged config, e.g. cpu_tiny")
    p.add_argument("--list-configs", action="store_true",
                   help="list the configs shipped with the package and exit")
    add_version_argument(p)
    p.add_argument("overrides", nargs="*", help="overrides such as train.steps=20 parallel.expert=2")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_configs:
        from ..config.packaged import listing

        print(listing())
        return 0
    if args.config is None:
        parser.error("--config is required (a YAML file or a packaged config: see --list-configs)")
    from .. import compat

    compat.quiet_expected_warnings()
    rank = os.environ.get("RANK", "0")
    from ..config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"csmoe-train: configuration error: {e}", file=sys.stderr)
        return 2
    from .loop import run_training

    try:
        run_training(cfg)
    except ConfigError as e:
        if rank == "0":
            print(f"csmoe-train: configuration error: {e}", file=sys.stderr)
        return 2
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
