"""Heatmaps of routing as images: for TensorBoard (CHW float tensors) and as PNG files.

No plotting library is needed: a small perceptual colour ramp, nearest-neighbour upscaling
so each cell is a visible block, and a minimal PNG writer (zlib) for files a person can open.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

# Anchor colours of a viridis-like ramp (dark blue -> green -> yellow), RGB in [0, 1].
_RAMP = torch.tensor([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                      [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]])


def colourise(values: torch.Tensor, vmin: float = 0.0, vmax: float | None = None) -> torch.Tensor:
    """[rows, cols] values -> [3, rows, cols] RGB in [0, 1]."""
    v = values.detach().float().cpu()
    top = float(v.max()) if vmax is None else vmax
    t = ((v - vmin) / max(top - vmin, 1e-12)).clamp(0, 1) * (len(_RAMP) - 1)
    lo = t.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (t - lo.float()).unsqueeze(-1)
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    return rgb.permute(2, 0, 1).contiguous()


def upscale(image: torch.Tensor, cell_h: int, cell_w: int) -> torch.Tensor:
    return image.repeat_interleave(cell_h, dim=1).repeat_interleave(cell_w, dim=2)


def heatmap(values: torch.Tensor, cell_h: int = 16, cell_w: int = 16,
            vmax: float | None = None) -> torch.Tensor:
    return upscale(colourise(values, vmax=vmax), cell_h, cell_w)


def expert_load_image(loads: dict[int, torch.Tensor], cell: int = 16) -> torch.Tensor:
    """Rows: MoE layers; columns: experts; colour: fraction of routed tokens (0 .. 2/E)."""
    layers = sorted(loads)
    table = torch.stack([loads[layer].float().cpu() for layer in layers])
    balanced = 1.0 / table.shape[1]
    return heatmap(table, cell, cell, vmax=2 * balanced)  # uniform load sits mid-ramp


def agreement_image(history: list[list[float]], width: int = 600, row_height: int = 24) -> torch.Tensor:
    """Rows: MoE layers; columns: successive competition steps (oldest left); colour: the
    fraction of tokens whose router top-K equals the competition's winners (0 dark .. 1 yellow)."""
    table = torch.tensor(history, dtype=torch.float32).T  # [layers, time]
    cell_w = max(1, width // table.shape[1])
    return heatmap(table, row_height, cell_w, vmax=1.0)


def write_png(image_chw: torch.Tensor, path: Path) -> None:
    """Write a [3, H, W] float image in [0, 1] as an 8-bit RGB PNG (atomically)."""
    rgb = (image_chw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    height, width = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[row].numpy().tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
