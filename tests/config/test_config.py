"""YAML loading, overrides and validation: errors name the key and the fix."""

import math
from pathlib import Path

import pytest
import yaml

from csmoe_megatron.config import (ConfigError, load_config, save_config, total_steps, validate)
from csmoe_megatron.config.packaged import packaged_configs

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_config_loads_and_validates():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        p = cfg.parallel
        # The smallest world that fits both the dense and the expert layout.
        world = math.lcm(p.tensor * p.pipeline * p.context,
                         (p.expert_tensor or p.tensor) * p.expert * p.pipeline)
        validate(cfg, world_size=world)


def test_overrides_are_typed():
    cfg = load_config(REPO / "configs/cpu_tiny.yaml",
                      ["train.steps=7", "model.moe.competesmoe.rate=0.5", "parallel.sequence_parallel=true",
                       "data.prefixes=[0.3, a, 0.7, b]", "model.vocab_size=null"])
    assert cfg.train.steps == 7
    assert cfg.model.moe.competesmoe.rate == 0.5
    assert cfg.parallel.sequence_parallel is True
    assert cfg.data.prefixes == [0.3, "a", 0.7, "b"]
    assert cfg.model.vocab_size is None


@pytest.mark.parametrize("override,fragment", [
    ("train.stpes=3", "did you mean train.steps"),
    ("model.moe.num_expert=3", "did you mean model.moe.num_experts"),
    ("train.steps=abc", "train.steps must be an integer"),
    ("parallel.sequence_parallel=3", "must be true or false"),
    ("train.steps", "section.key=value"),
])
def test_bad_keys_and_types(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(REPO / "configs/cpu_tiny.yaml", [override])


@pytest.mark.parametrize("overrides,world,fragment", [
    (["model.moe.router=sinkhorn"], 2, "model.moe.router is 'sinkhorn'; choose one of"),
    (["parallel.expert=3"], 3, "num_experts \\(8\\) must be divisible by parallel.expert"),
    (["parallel.tensor=2", "parallel.expert=1"], 3, "not divisible by parallel.tensor"),
    (["parallel.tensor=2", "parallel.expert=1"], 2, "requires parallel.sequence_parallel"),
    (["parallel.tensor=3", "parallel.expert=1", "parallel.sequence_parallel=true"], 3,
     "num_attention_heads \\(4\\) must be divisible by parallel.tensor"),
    (["parallel.pipeline=3", "parallel.expert=1"], 3, "num_layers \\(4\\) must be divisible"),
    (["train.global_batch_size=10"], 2, "global_batch_size \\(10\\) must be divisible"),
    (["model.moe.top_k=9"], 2, "top_k \\(9\\) exceeds"),
    (["train.tokens=1000"], 2, "exactly one of train.steps and train.tokens"),
    (["train.lr_warmup_steps=500"], 2, "lr_warmup_steps"),
    (["data.source=indexed"], 2, "needs data.prefixes"),
    (["parallel.virtual_pipeline=2", "parallel.expert=1"], 2, "virtual_pipeline needs"),
    (["model.moe.competesmoe.combine=some"], 2, "model.moe.competesmoe.combine is 'some'"),
])
def test_layout_and_batch_validation(overrides, world, fragment):
    cfg = load_config(REPO / "configs/cpu_tiny.yaml", overrides)
    with pytest.raises(ConfigError, match=fragment):
        validate(cfg, world_size=world)


def test_tokens_give_steps():
    cfg = load_config(REPO / "configs/cpu_tiny.yaml", ["train.steps=null", "train.tokens=204800"])
    assert total_steps(cfg) == 204800 // (16 * 128)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs/cpu_tiny.yaml", ["train.steps=11"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 11


def test_a_bare_name_is_a_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the names resolve to the package's copies
    for name in ("cpu_tiny", "cpu_tiny.yaml"):
        assert load_config(name) == load_config(REPO / "configs/cpu_tiny.yaml")
    assert set(packaged_configs()) == {p.stem for p in (REPO / "configs").glob("*.yaml")}


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu_tiny").write_text("train:\n  steps: 7\n")
    assert load_config("cpu_tiny").train.steps == 7


def test_unknown_names_and_missing_paths_list_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given in ("cpu_small", "configs/cpu_tiny.yaml"):  # only bare names are looked up
        with pytest.raises(ConfigError, match=r"does not exist.*cpu_tiny, gpu_node_competesmoe"
                                              r".*--list-configs"):
            load_config(given)
