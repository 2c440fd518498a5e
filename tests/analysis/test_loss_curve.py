"""The loss curve (analysis/loss_curve.py) and the pictures a real short run leaves behind:
loss_curve.png, routing heatmaps as PNGs and as TensorBoard images (read back)."""

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from csmoe_megatron.analysis.loss_curve import (FILE_NAME, LossSeries, loss_curve_figure, main,
                                                read_losses, write_loss_curve)
from tests.launch.harness import CONFIG, run, tail


def _write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_read_losses_keeps_the_last_record_of_a_step_and_skips_steps_without_loss(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "val_loss": 4.5},
        {"step": 3, "skipped_step": 1.0}, {"step": 2, "loss": 3.9, "val_loss": 4.4},  # resumed
        {"step": 4, "loss": float("nan")}, {"step": 5, "loss": 3.0}])
    series = read_losses(tmp_path / "metrics.jsonl")
    assert series == LossSeries([1, 2, 5], [5.0, 3.9, 3.0], [2], [4.4])


def test_loss_curve_figure_has_titled_axes_a_legend_and_the_data():
    series = LossSeries([1, 2, 3], [5.0, 4.0, 3.5], [2], [4.2])
    fig = loss_curve_figure(series, "Loss of demo up to step 3")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "step" and ax.get_ylabel().startswith("loss")
    assert ax.get_title() == "Loss of demo up to step 3"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train (logged steps)",
                                                                   "validation"]
    train, val = ax.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [5.0, 4.0, 3.5]
    assert list(val.get_xdata()) == [2] and list(val.get_ydata()) == [4.2]


def test_no_loss_no_picture_and_the_command_names_a_missing_run(tmp_path, capsys):
    _write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "skipped_step": 1.0}])
    assert write_loss_curve(tmp_path) is None and not (tmp_path / FILE_NAME).exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nowhere")])
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def _tensorboard_images(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def _pixels(png_bytes_or_path):
    source = io.BytesIO(png_bytes_or_path) if isinstance(png_bytes_or_path, bytes) \
        else png_bytes_or_path
    return np.asarray(Image.open(source).convert("RGB"))


def test_a_short_run_writes_its_loss_curve_and_routing_pictures(tmp_path):
    run_dir = tmp_path / "run"
    result = run([sys.executable, "-m", "csmoe_megatron.train", "--config", CONFIG,
                  "data.source=mock", "model.vocab_size=128", "model.num_layers=2",
                  "train.steps=4", "train.lr_warmup_steps=1", "train.eval_interval=2",
                  "train.eval_iters=1", "logging.interval=1", "logging.tensorboard=true",
                  "logging.routing_images_interval=2", "model.moe.competesmoe.rate=1.0",
                  "model.moe.competesmoe.warmup_fraction=0", "parallel.expert=1",
                  "checkpoint.save_at_end=false", f"run.dir={run_dir}"], timeout=600)
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    curve = run_dir / FILE_NAME
    assert curve.is_file() and _pixels(curve).shape[2] == 3
    series = read_losses(run_dir / "metrics.jsonl")
    assert series.train_steps == [1, 2, 3, 4] and series.val_steps == [2, 4]

    routing = run_dir / "routing"
    assert sorted(p.name for p in routing.iterdir()) == [
        "agreement.png", "expert_load_step0000002.png", "expert_load_step0000004.png"]
    images = _tensorboard_images(run_dir / "tb")
    assert sorted(images) == ["moe/expert_load", "moe/router_competition_agreement"]
    assert [event.step for event in images["moe/expert_load"]] == [2, 4]
    # TensorBoard shows the same picture as the PNG.
    last_load = images["moe/expert_load"][-1].encoded_image_string
    assert np.array_equal(_pixels(last_load), _pixels(routing / "expert_load_step0000004.png"))
    last_agreement = images["moe/router_competition_agreement"][-1].encoded_image_string
    assert np.array_equal(_pixels(last_agreement), _pixels(routing / "agreement.png"))
