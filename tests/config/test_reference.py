"""The configuration reference is generated from schema.py: every key has a meaning, and
docs/configuration.md is exactly what the generator prints (regenerate it when keys change)."""

import dataclasses
from pathlib import Path

from csmoe_megatron.config import schema
from csmoe_megatron.config.reference import as_markdown, config_keys
from csmoe_megatron.train.__main__ import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _leaf_keys(cls, prefix=""):
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        keys += _leaf_keys(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) \
            else [prefix + f.name]
    return keys


def test_every_key_is_listed_once_with_a_meaning():
    rows = config_keys()
    assert [key for key, _, _ in rows] == _leaf_keys(schema.ExperimentConfig)
    assert [key for key, _, meaning in rows if len(meaning) < 8] == []
    meanings = dict((key, meaning) for key, _, meaning in rows)
    # A trailing comment wins; a block comment above serves the fields under it, no further.
    assert meanings["model.moe.competesmoe.rate"].startswith("omega")
    assert meanings["parallel.overlap_param_gather"].startswith("Overlap DP gradient")
    assert meanings["parallel.moe_a2a_overlap"].startswith("Overlap the expert-parallel")
    assert "(combine \"winners\"" in meanings["model.moe.competesmoe.token_chunk"]


def test_the_docs_are_the_generated_reference():
    assert DOC.read_text() == as_markdown(), (
        "docs/configuration.md is stale: .venv/bin/python -m csmoe_megatron.config.reference "
        "> docs/configuration.md")


def test_list_keys_prints_every_key_with_its_default(capsys):
    assert main(["--list-keys"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(config_keys())
    assert "train.lr = 0.003  # peak learning rate" in out
    assert any(line.startswith("data.tokenizer = null") for line in out)
