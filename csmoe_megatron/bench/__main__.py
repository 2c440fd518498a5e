"""`csmoe-bench <name> [options]`: benchmarks that print a table and, last, one JSON line.

  csmoe-bench moe-layer [--json] ...   CompeteSMoE layer vs megatron-core's MoELayer
  csmoe-bench preprocess ...           tokenizer/encoding throughput, 1 vs 2 workers
  csmoe-bench --version
"""

from __future__ import annotations

import sys

BENCHMARKS = {"moe-layer": "csmoe_megatron.bench.moe_layer",
              "preprocess": "csmoe_megatron.bench.preprocess"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from ..version import version_line

        print(version_line())
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    from .. import compat

    compat.quiet_expected_warnings()
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":  # the benchmarks may spawn processes: keep the guard
    sys.exit(main())
