"""Routing heatmaps a person can read: titled axes, tick labels, a colour bar, a title that says
the step and the quantity. Drawn with matplotlib's Agg canvas (no display, no pyplot state), then
rendered once to an RGB array that feeds both TensorBoard and the PNG under <run.dir>/routing/.

* expert load: rows MoE layers, columns experts, colour the fraction of routed token slots each
  expert took since the previous record (uniform load = 1/E, marked on the colour bar);
* router-competition agreement: rows MoE layers, columns the steps of the records that held a
  competition step, colour the fraction of tokens whose router top-K equals the winners.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

CMAP = "viridis"  # perceptually uniform, readable in grey
ANNOTATE_UP_TO = 16  # cells per side below which each cell also shows its number
MAX_X_TICKS = 12
NOT_MEASURED = "#d9d9d9"  # light grey: a NaN cell (a layer that has not competed yet)


def _new_figure(rows: int, cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = min(max(3.0 + 0.5 * cols, 6.0), 16.0)
    height = min(max(1.8 + 0.45 * rows, 3.0), 12.0)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _heatmap(fig, table: np.ndarray, vmin: float, vmax: float, annotate: bool):
    """One imshow of table [rows, cols] with a colour bar; cell (c, r) is centred at data (c, r)."""
    from matplotlib import colormaps

    ax = fig.add_subplot()
    cmap = colormaps[CMAP].with_extremes(bad=NOT_MEASURED)
    image = ax.imshow(np.ma.masked_invalid(table), cmap=cmap, vmin=vmin, vmax=vmax,
                      aspect="auto", interpolation="nearest")
    ax.set_yticks(range(table.shape[0]))
    if annotate:
        norm = image.norm
        for (r, c), value in np.ndenumerate(table):
            if not np.isfinite(value):
                continue
            # Dark text on the bright (yellow) end of the ramp, white elsewhere.
            luminance = np.dot(cmap(norm(value))[:3], (0.299, 0.587, 0.114))
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if luminance > 0.5 else "white")
    return ax, fig.colorbar(image, ax=ax)


def expert_load_figure(loads: dict[int, torch.Tensor], step: int):
    """{MoE layer: [E] fractions of routed slots} -> Figure. The colour scale runs from 0 to
    max(2/E, the largest load), so a balanced layer sits mid-ramp and nothing is clipped."""
    layers = sorted(loads)
    table = torch.stack([loads[layer].detach().float().cpu() for layer in layers]).numpy()
    num_experts = table.shape[1]
    uniform = 1.0 / num_experts
    fig = _new_figure(len(layers), num_experts)
    small = max(table.shape) <= ANNOTATE_UP_TO
    ax, bar = _heatmap(fig, table, 0.0, max(2 * uniform, float(table.max())), small)
    ax.set_xticks(range(num_experts) if num_experts <= 32 else
                  range(0, num_experts, max(1, num_experts // 16)))
    ax.set_yticklabels([str(layer) for layer in layers])
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_title(f"Expert load at step {step}\n"
                 f"fraction of the routed token slots each expert took since the last record",
                 fontsize=10)
    bar.set_label(f"fraction of slots (line: uniform 1/{num_experts})")
    bar.ax.axhline(uniform, color="white", linewidth=2)
    return fig


def agreement_figure(history: Sequence[Sequence[float]], steps: Sequence[int], step: int):
    """history[i][k]: agreement of MoE layer k in the record at steps[i] -> Figure."""
    if len(history) != len(steps):
        raise ValueError(f"{len(history)} agreement rows but {len(steps)} steps")
    table = np.asarray(history, dtype=np.float64).T  # [layers, records]
    fig = _new_figure(table.shape[0], min(table.shape[1], 20))
    small = max(table.shape) <= ANNOTATE_UP_TO
    ax, bar = _heatmap(fig, table, 0.0, 1.0, small)
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), MAX_X_TICKS)).round()
                      ).astype(int)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(steps[i]) for i in ticks])
    ax.set_yticklabels([str(k) for k in range(table.shape[0])])
    ax.set_xlabel("step (records with a competition step)")
    ax.set_ylabel("MoE layer")
    unmeasured = "\n(grey: that layer had not competed yet)" if np.isnan(table).any() else ""
    ax.set_title(f"Router-competition agreement up to step {step}\n"
                 f"tokens whose router top-K equals the competition winners{unmeasured}",
                 fontsize=10)
    bar.set_label("fraction of tokens")
    return fig


def render_rgb(fig) -> np.ndarray:
    """The figure's pixels, [H, W, 3] uint8 (row 0 at the top)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def tensorboard_image(rgb: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] uint8, the layout SummaryWriter.add_image expects."""
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Write [H, W, 3] uint8 pixels as a PNG, atomically (a reader never sees half a file)."""
    from matplotlib.image import imsave

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        imsave(handle, rgb, format="png")
    os.replace(tmp, path)
