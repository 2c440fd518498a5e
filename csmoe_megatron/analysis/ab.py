"""A/B: the same experiment with CompeteSMoE routing and with megatron's top-K router.

    python -m csmoe_megatron.analysis.ab --config configs/cpu_tiny.yaml --nproc 2 [key=value ...]

Runs the config twice under torchrun — identical seed, data, model and layout, only
`model.moe.router` differs — into <out>/competesmoe and <out>/topk, then prints validation loss
at every evaluation step side by side, the throughput of each, and one JSON object last.
This is the paper's claim in miniature: lower loss at the same compute, with low overhead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ..version import add_version_argument

ROUTERS = ("competesmoe", "topk")


def _run(config: str, nproc: int, run_dir: Path, router: str, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "csmoe_megatron.train", "--config", config,
           *overrides, f"model.moe.router={router}", f"run.dir={run_dir}"]
    print(f"ab: training {router} into {run_dir}", flush=True)
    subprocess.run(cmd, check=True)


def _read(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compare(runs: dict[str, list[dict]]) -> dict:
    val = {r: {m["step"]: m["val_loss"] for m in records if "val_loss" in m}
           for r, records in runs.items()}
    steps = sorted(set.intersection(*(set(v) for v in val.values())))
    # The run-average: every step weighs the same (metrics.jsonl also holds every competition
    # step, so a median over its records would over-weigh the slow ones).
    speed = {r: [m["tokens_per_s_avg"] for m in records if "tokens_per_s_avg" in m][-1]
             for r, records in runs.items()}
    last = steps[-1] if steps else None
    return {
        "steps": steps,
        "val_loss": {r: [val[r][s] for s in steps] for r in runs},
        "final_val_loss": {r: val[r][last] for r in runs} if last else {},
        "final_val_loss_delta": (val["competesmoe"][last] - val["topk"][last]) if last else None,
        "tokens_per_s": speed,
        "throughput_ratio_competesmoe_over_topk": speed["competesmoe"] / speed["topk"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="csmoe-ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML experiment file or packaged config name")
    add_version_argument(p)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", default="runs/ab", help="parent directory of the two runs")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out = Path(args.out)
    for router in ROUTERS:
        _run(args.config, args.nproc, out / router, router, args.overrides)
    report = compare({r: _read(out / r) for r in ROUTERS})
    print(f"{'step':>8} {'val_loss competesmoe':>22} {'val_loss topk':>15}")
    for i, step in enumerate(report["steps"]):
        print(f"{step:>8} {report['val_loss']['competesmoe'][i]:>22.4f} "
              f"{report['val_loss']['topk'][i]:>15.4f}")
    print(f"tokens/s over the run: competesmoe {report['tokens_per_s']['competesmoe']:,.0f}, "
          f"topk {report['tokens_per_s']['topk']:,.0f} "
          f"(x{report['throughput_ratio_competesmoe_over_topk']:.2f})")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
