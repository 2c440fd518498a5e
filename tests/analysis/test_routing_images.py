"""Routing pictures: valid PNGs whose pixels follow the values."""

import struct
import zlib

import torch

from csmoe_megatron.analysis.routing_images import (agreement_image, colourise,
                                                    expert_load_image, write_png)


def _read_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4: idat])[0]
    raw = zlib.decompress(data[idat + 4: idat + 4 + length])
    return width, height, raw


def test_expert_load_heatmap_png(tmp_path):
    loads = {0: torch.tensor([0.5, 0.5, 0.0, 0.0]), 1: torch.full((4,), 0.25)}
    image = expert_load_image(loads, cell=4)
    assert image.shape == (3, 8, 16)
    write_png(image, tmp_path / "load.png")
    width, height, raw = _read_png(tmp_path / "load.png")
    assert (width, height) == (16, 8)
    assert len(raw) == height * (1 + 3 * width)


def test_colour_ramp_is_monotone_in_brightness():
    rgb = colourise(torch.linspace(0, 1, 11).unsqueeze(0))
    brightness = rgb.sum(dim=0)[0]
    assert torch.all(brightness[1:] >= brightness[:-1] - 1e-6)


def test_agreement_history_image_shape():
    history = [[0.1, 0.2], [0.3, 0.4], [0.9, 1.0]]
    image = agreement_image(history, width=60, row_height=5)
    assert image.shape == (3, 10, 60)
    # Later (right) columns are brighter where agreement rose.
    assert image[:, 0, -1].sum() > image[:, 0, 0].sum()
