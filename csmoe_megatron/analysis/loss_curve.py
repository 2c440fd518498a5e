"""The loss curve of a run as a PNG: training loss (every logged step) and validation loss (every
evaluation), read from <run.dir>/metrics.jsonl and written to <run.dir>/loss_curve.png.

The trainer writes it once at the end of a run (also when it stops early on a signal);
`python -m csmoe_megatron.analysis.loss_curve RUN_DIR` draws it for a run still going or one
from before this picture existed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import NamedTuple

FILE_NAME = "loss_curve.png"


class LossSeries(NamedTuple):
    train_steps: list[int]
    train_loss: list[float]
    val_steps: list[int]
    val_loss: list[float]


def read_losses(metrics_path: Path) -> LossSeries:
    """Losses by step from metrics.jsonl. A step logged twice (a resumed run that repeats the
    steps after its checkpoint) keeps its last values; skipped steps carry no loss."""
    last: dict[int, dict] = {}
    with open(metrics_path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                record = json.loads(line)
                # Merged: the final held-out record shares the last step's number.
                last.setdefault(int(record["step"]), {}).update(record)
    series = LossSeries([], [], [], [])
    for step in sorted(last):
        for key, steps, values in (("loss", series.train_steps, series.train_loss),
                                   ("val_loss", series.val_steps, series.val_loss)):
            value = last[step].get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                steps.append(step)
                values.append(float(value))
    return series


def loss_curve_figure(series: LossSeries, title: str):
    """Figure with both series on one step axis (Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(series.train_steps, series.train_loss, color="tab:blue", linewidth=1.2,
            marker="." if len(series.train_steps) < 50 else None, label="train (logged steps)")
    if series.val_steps:
        ax.plot(series.val_steps, series.val_loss, color="tab:orange", linewidth=1.5,
                marker="o", markersize=4, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def write_loss_curve(run_dir: Path) -> Path | None:
    """Draw <run_dir>/loss_curve.png from <run_dir>/metrics.jsonl (atomically); None, and no
    file, when the run logged no loss yet."""
    from .routing_images import render_rgb, write_png

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    series = read_losses(metrics)
    if not series.train_steps and not series.val_steps:
        return None
    last = max(series.train_steps[-1:] + series.val_steps[-1:])
    fig = loss_curve_figure(series, f"Loss of {run_dir.name} up to step {last}")
    path = run_dir / FILE_NAME
    write_png(render_rgb(fig), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csmoe_megatron.analysis.loss_curve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding metrics.jsonl")
    args = parser.parse_args(argv)
    if not (args.run_dir / "metrics.jsonl").is_file():
        parser.error(f"{args.run_dir / 'metrics.jsonl'} does not exist: pass a run directory "
                     f"(run.dir of a training run)")
    path = write_loss_curve(args.run_dir)
    print(path if path else f"no loss logged yet in {args.run_dir / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
