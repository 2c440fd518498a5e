"""Routing heatmaps: titled axes, tick labels, a colour bar and a title (read from the figure
objects), and pixels that follow the values (the PNG decoded, each cell's colour inverted
through the colour map back to a value)."""

import math

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from csmoe_megatron.analysis import routing_images as pictures

LUT = colormaps[pictures.CMAP](np.linspace(0, 1, 256))[:, :3] * 255


def _decode(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _cell_pixel(fig, rgb, row, col):
    """The pixel inside cell (row, col), away from the centred number."""
    x, y = fig.axes[0].transData.transform((col, row - 0.3))
    return rgb[rgb.shape[0] - int(round(y)), int(round(x))].astype(float)


def _value_of(pixel, vmin, vmax):
    """Invert the colour map: the value whose colour is nearest to the pixel."""
    index = int(np.argmin(((LUT - pixel) ** 2).sum(axis=1)))
    assert ((LUT[index] - pixel) ** 2).sum() < 12, f"{pixel} is not a colour of the map"
    return vmin + (index + 0.5) / 256 * (vmax - vmin)


def _texts(axis):
    return [label.get_text() for label in axis.get_ticklabels()]


def test_expert_load_heatmap_is_labelled_and_its_pixels_follow_the_loads(tmp_path):
    loads = {0: torch.tensor([0.40, 0.30, 0.20, 0.10]), 1: torch.full((4,), 0.25),
             2: torch.tensor([0.05, 0.05, 0.55, 0.35])}
    fig = pictures.expert_load_figure(loads, step=120)
    rgb = pictures.render_rgb(fig)
    ax, bar = fig.axes
    assert ax.get_xlabel() == "expert" and ax.get_ylabel() == "MoE layer"
    assert "step 120" in ax.get_title() and "load" in ax.get_title().lower()
    assert _texts(ax.yaxis) == ["0", "1", "2"] and _texts(ax.xaxis) == ["0", "1", "2", "3"]
    assert "uniform 1/4" in bar.get_ylabel()
    pictures.write_png(rgb, tmp_path / "load.png")
    decoded = _decode(tmp_path / "load.png")
    assert np.array_equal(decoded, rgb)

    vmax = 0.55  # max(2/E, largest load)
    table = torch.stack([loads[k] for k in sorted(loads)]).numpy()
    seen = np.array([[_value_of(_cell_pixel(fig, decoded, r, c), 0.0, vmax)
                      for c in range(4)] for r in range(3)])
    np.testing.assert_allclose(seen, table, atol=1.5 * vmax / 256)  # one colour bin
    assert np.unravel_index(seen.argmax(), seen.shape) == (2, 2)  # the hottest cell


def test_agreement_heatmap_is_labelled_and_its_pixels_follow_the_history(tmp_path):
    history = [[math.nan, 0.1], [0.2, 0.3], [0.4, 0.95]]
    fig = pictures.agreement_figure(history, steps=[10, 20, 40], step=40)
    rgb = pictures.render_rgb(fig)
    ax, bar = fig.axes
    assert ax.get_xlabel().startswith("step") and ax.get_ylabel() == "MoE layer"
    assert "step 40" in ax.get_title() and "agreement" in ax.get_title().lower()
    assert _texts(ax.xaxis) == ["10", "20", "40"] and _texts(ax.yaxis) == ["0", "1"]
    assert bar.get_ylabel() == "fraction of tokens"
    pictures.write_png(rgb, tmp_path / "agreement.png")
    decoded = _decode(tmp_path / "agreement.png")

    grey = np.array([int(pictures.NOT_MEASURED[i:i + 2], 16) for i in (1, 3, 5)])
    assert np.array_equal(_cell_pixel(fig, decoded, 0, 0), grey)  # not measured yet
    for col, row_values in enumerate(history):
        for row, value in enumerate(row_values):
            if not math.isnan(value):
                seen = _value_of(_cell_pixel(fig, decoded, row, col), 0.0, 1.0)
                assert seen == pytest.approx(value, abs=1.5 / 256), (row, col)


def test_tensorboard_gets_the_same_pixels_channels_first():
    rgb = pictures.render_rgb(pictures.expert_load_figure({0: torch.full((2,), 0.5)}, 1))
    chw = pictures.tensorboard_image(rgb)
    assert chw.dtype == torch.uint8 and chw.shape == (3, *rgb.shape[:2])
    assert torch.equal(chw.permute(1, 2, 0), torch.from_numpy(rgb))


def test_agreement_rows_and_steps_must_match():
    with pytest.raises(ValueError, match="2 agreement rows but 1 steps"):
        pictures.agreement_figure([[0.1], [0.2]], steps=[5], step=5)
