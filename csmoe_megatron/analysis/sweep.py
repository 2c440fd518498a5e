"""Sweep: one base config, a grid or a list of override sets, seeds; same runs and report as
csmoe-ab.

    csmoe-sweep SWEEP.yaml [--nproc 2] [--out DIR] [--slurm] [key=value ...]

SWEEP.yaml:
    config: configs/cpu_tiny.yaml       # base config (a path relative to SWEEP.yaml's folder
                                        # or the working directory, or a packaged name)
    seeds: [1, 2, 3]
    overrides: [train.steps=200]        # optional: every run
    grid:                               # the Cartesian product of these values...
      model.moe.competesmoe.rate: [0.05, 0.1]
      model.moe.competesmoe.diversity_coef: [0.0, 0.005]
    points:                             # ...and/or named override sets (an arm each)
      authors_conventions: {model.moe.competesmoe.diversity_average: matrix}
    arms: [topk]                        # optional: built-in arms to compare against
    baseline: topk                      # optional: default the first arm
    out: runs/sweep_rate_gamma          # optional: default runs/sweep/<file name>

A grid point's arm name lists its values by the last part of each key, e.g.
rate=0.05,diversity_coef=0.0. Trailing key=value arguments apply to every run.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import yaml

from ..version import add_version_argument
from .ab import add_campaign_arguments, run_campaign
from .experiment import ExperimentError, arms_from_mapping, parse_seeds, plan_runs

_KEYS = {"config", "seeds", "overrides", "grid", "points", "arms", "baseline", "out"}


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def grid_arms(grid: dict) -> dict[str, list[str]]:
    """{arm name: overrides} for every combination of the grid's values, in order."""
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ExperimentError("sweep grid must map dotted keys to non-empty lists of values")
    keys = list(grid)
    arms = {}
    for values in itertools.product(*(grid[k] for k in keys)):
        name = ",".join(f"{k.rsplit('.', 1)[-1]}={_value_text(v)}" for k, v in zip(keys, values))
        arms[name.replace("/", "_")] = [f"{k}={_value_text(v)}" for k, v in zip(keys, values)]
    return arms


def load_sweep(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ExperimentError(f"cannot read sweep file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ExperimentError(f"sweep file {path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict) or "config" not in spec:
        raise ExperimentError(f"sweep file {path} must be a mapping with at least `config`")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ExperimentError(f"sweep file {path}: unknown key(s) {sorted(unknown)}; known: "
                              f"{sorted(_KEYS)}")
    if not spec.get("grid") and not spec.get("points") and not spec.get("arms"):
        raise ExperimentError(f"sweep file {path} needs `grid`, `points` or `arms`")
    return spec


def sweep_arms(spec: dict) -> dict[str, list[str]]:
    arms = arms_from_mapping(spec["arms"]) if spec.get("arms") else {}
    if spec.get("grid"):
        arms.update(grid_arms(spec["grid"]))
    if spec.get("points"):
        arms.update(arms_from_mapping(spec["points"]))
    return arms


def _config_path(spec: dict, sweep_file: Path) -> str:
    given = str(spec["config"])
    beside = sweep_file.parent / given
    return str(beside) if not Path(given).is_file() and beside.is_file() else given


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="csmoe-sweep", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="SWEEP.yaml")
    add_version_argument(p)
    add_campaign_arguments(p)
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = load_sweep(args.sweep)
        arms = sweep_arms(spec)
        seeds = parse_seeds(",".join(str(s) for s in spec.get("seeds", [1])))
        base = [str(o) for o in spec.get("overrides") or []]
        out = Path(args.out or spec.get("out") or Path("runs/sweep") / args.sweep.stem)
        config = _config_path(spec, args.sweep)
        runs = plan_runs(config, arms, seeds, [*base, *args.overrides], out)
        baseline = spec.get("baseline") or next(iter(arms))
        return run_campaign(args, config, runs, baseline, out, "csmoe-sweep",
                            "csmoe_megatron.analysis.sweep", argv)
    except ExperimentError as e:
        print(f"csmoe-sweep: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
