"""`csmoe-check cuda --config CONFIG [section.key=value ...]`: checks that run instead of a job.

  cuda   the config's GPU code path (CUDA devices, NCCL groups, bf16) driven on any machine,
         CPU-only included: exits non-zero naming the op/module/devices when a tensor that
         belongs on the GPU is on the CPU, an op mixes devices, or an NCCL collective gets a
         CPU tensor. Prints host syncs per training step.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ..version import add_version_argument


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csmoe-check", description=__doc__.split("\n")[0])
    add_version_argument(p)  # before the subcommand: `csmoe-check --version`
    sub = p.add_subparsers(dest="check", required=True)
    cuda = sub.add_parser("cuda", help="CUDA/NCCL semantics of a config, on CPU")
    cuda.add_argument("--config", required=True, help="YAML experiment, e.g. "
                      "configs/gpu_node_competesmoe.yaml")
    cuda.add_argument("overrides", nargs="*", help="section.key=value overrides")
    cuda.add_argument("--world", type=int, default=None,
                      help="emulated ranks (default: the fewest that hold the layout)")
    cuda.add_argument("--full-size", action="store_true",
                      help="keep the config's sizes (default: shrink widths, layers, batch)")
    cuda.add_argument("--work-dir", default=None, help="keep logs and reports here")
    cuda.add_argument("--setup", default=None, help=argparse.SUPPRESS)  # tests: module:function
    cuda.add_argument("--timeout", type=float, default=900.0, help="seconds (default 900)")
    return p


def _print_syncs(reports: list[dict]) -> None:
    rows = reports[0].get("host_syncs", []) if reports else []
    steps = sorted({r["step"] for r in rows if r["step"] is not None})
    for step in steps:
        sites = Counter()
        for r in rows:
            if r["step"] == step:
                sites[(r["kind"], r["site"])] += r["count"]
        print(f"  host syncs in step {step + 1} (rank 0): {sum(sites.values())}")
        for (kind, where), n in sites.most_common():
            print(f"    {n:3d}  {kind}  at {where}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .. import compat

    compat.quiet_expected_warnings()
    from ..config import ConfigError
    from .cuda_check import run

    try:
        result = run(args.config, args.overrides, world=args.world, full_size=args.full_size,
                     setup=args.setup, work_dir=args.work_dir, timeout_s=args.timeout)
    except ConfigError as e:
        print(f"csmoe-check: configuration error: {e}", file=sys.stderr)
        return 2
    if result["ok"]:
        _print_syncs(result["ranks"])
        print(f"csmoe-check cuda: OK on {result['world']} emulated GPU ranks: router and "
              f"competition steps, evaluation, save and resume stayed on the GPU")
        return 0
    for report in result["ranks"]:
        if not report.get("ok"):
            print(f"csmoe-check cuda: FAILED on rank {report['rank']}: {report.get('error')}",
                  file=sys.stderr)
            break
    print(f"  logs: {result['work_dir']}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
