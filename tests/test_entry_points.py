"""What every console script answers without a job to run: --version, and csmoe-train's
--list-configs (neither needs --config)."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from csmoe_megatron import __version__


def _console_scripts() -> dict[str, metadata.EntryPoint]:
    dist = metadata.distribution("csmoe-megatron")
    return {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}


def _run(main, argv, capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's --version and usage errors exit
        code = stop.code
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def test_every_console_script_prints_the_versions(capsys):
    scripts = _console_scripts()
    assert set(scripts) == {"csmoe-train", "csmoe-tokenizer", "csmoe-bench", "csmoe-ab",
                            "csmoe-sweep", "csmoe-check", "csmoe-export", "csmoe-import",
                            "csmoe-eval", "csmoe-generate"}
    expected = (f"csmoe-megatron {__version__} (megatron-core {metadata.version('megatron-core')}, "
                f"torch {metadata.version('torch')})\n")
    for name, entry in scripts.items():
        assert _run(entry.load(), ["--version"], capsys) == (0, expected, ""), name


def test_the_package_version_is_the_distribution_version():
    assert __version__ == metadata.version("csmoe-megatron")


def test_list_configs_needs_no_config(capsys):
    train = _console_scripts()["csmoe-train"].load()
    code, out, _ = _run(train, ["--list-configs"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["cpu_tiny", "gpu_node_competesmoe", "gpu_smoke", "paper_lm_competesmoe"]
    assert re.search(r"^cpu_tiny +The README's default: a small CompeteSMoE", out, re.M)


@pytest.mark.parametrize("argv", [[], ["train.steps=3"]])
def test_train_without_config_points_at_list_configs(argv, capsys):
    train = _console_scripts()["csmoe-train"].load()
    code, _, err = _run(train, argv, capsys)
    assert code == 2 and "--config is required" in err and "--list-configs" in err


@pytest.mark.parametrize("config,extra,numbers", [
    ("cpu_tiny", [], ["world size 2", "3.94M total, 1.58M active"]),
    ("gpu_node_competesmoe", ["--nproc", "16", "data.source=mock", "model.vocab_size=32000"],
     ["world size 16", "EP 8", "732.95M total, 138.41M active"]),  # the config's ~730M / ~140M
])
def test_check_prints_the_plan_and_writes_nothing(config, extra, numbers, tmp_path, monkeypatch,
                                                  capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSMOE_CACHE_DIR", str(tmp_path / "cache"))
    train = _console_scripts()["csmoe-train"].load()
    code, out, err = _run(train, ["--check", "--config", config, *extra], capsys)
    assert (code, err) == (0, "")
    for text in numbers + ["tokens a step", "FLOPs a step", "optimizer",
                           "activations, competition step"]:
        assert text in out, text
    assert list(tmp_path.iterdir()) == []  # no run directory, no corpus cache


def test_check_refuses_with_one_message(capsys):
    train = _console_scripts()["csmoe-train"].load()
    code, out, err = _run(train, ["--check", "--config", "cpu_tiny", "train.adam_beta1=2"], capsys)
    assert code == 2 and out == ""
    assert err == ("csmoe-train: configuration error: train.adam_beta1 must be in [0, 1) "
                   "(an Adam moment decay), got 2.0\n")


def test_check_of_a_short_run_notes_the_shortened_warmup(capsys):
    train = _console_scripts()["csmoe-train"].load()
    code, out, err = _run(train, ["--check", "--config", "cpu_tiny", "train.steps=10"], capsys)
    assert code == 0 and "steps: 10" in out
    assert err.count("\n") == 1 and "warm-up shortened to 1 step(s)" in err
