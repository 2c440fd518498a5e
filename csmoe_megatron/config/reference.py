"""Every config key with its default and meaning, read from schema.py itself (its field
comments), so the reference cannot drift from the code: `csmoe-train --list-keys` prints it and
docs/configuration.md is its Markdown (tests/config/test_reference.py keeps the two equal)."""

from __future__ import annotations

import dataclasses
import inspect
import re

from . import schema

_FIELD = re.compile(r"^\s+(\w+):\s[^=]+=\s*(?P<default>.*?)(?:\s+#\s?(?P<comment>.*))?$")
_COMMENT = re.compile(r"^\s+#(?P<text>.*)$")


def _meanings(cls) -> dict[str, str]:
    """Field -> its comment: the trailing one (with its indented continuation lines), else the
    block comment above it (shared by consecutive fields until a blank line)."""
    meanings, block, last, after_field = {}, [], None, False
    names = {f.name for f in dataclasses.fields(cls)}
    for line in inspect.getsource(cls).splitlines()[1:]:
        comment = _COMMENT.match(line)
        if comment:
            text = comment["text"]
            if last is not None and text.startswith("  "):  # a trailing comment continued
                meanings[last] += " " + text.strip()
                continue
            block = ([] if after_field else block) + [text.strip()]
            last, after_field = None, False
            continue
        field = _FIELD.match(line)
        if not line.strip() or not field or field[1] not in names:
            block, last, after_field = [], None, False
            continue
        meanings[field[1]] = (field["comment"] or " ".join(block)).strip()
        last, after_field = (field[1] if field["comment"] else None), True
    return meanings


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def config_keys(cls=schema.ExperimentConfig, prefix: str = "") -> list[tuple[str, object, str]]:
    """[(dotted key, default, meaning)] for every leaf key, in schema order."""
    rows, meanings = [], _meanings(cls)
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            rows += config_keys(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((prefix + f.name, default, meanings.get(f.name, "")))
    return rows


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or '""'
    return str(value)


def as_text() -> str:
    return "\n".join(f"{key} = {_yaml(default)}" + (f"  # {meaning}" if meaning else "")
                     for key, default, meaning in config_keys()) + "\n"


def as_markdown() -> str:
    lines = ["# Configuration reference", "",
             "Every key of an experiment's YAML (`section.key=value` on the command line), its",
             "default and its meaning. Generated from `csmoe_megatron/config/schema.py`",
             "(`csmoe-train --list-keys` prints the same); `tests/config/test_reference.py`",
             "fails when this file and the code disagree. Regenerate with:",
             "", "    .venv/bin/python -m csmoe_megatron.config.reference > docs/configuration.md"]
    section = None
    for key, default, meaning in config_keys():
        head = key.rsplit(".", 1)[0]
        if head != section:
            section = head
            lines += ["", f"## `{section}`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        text = meaning.replace('|', '/').replace('<', '&lt;').replace('>', '&gt;')
        lines.append(f"| `{key}` | `{_yaml(default)}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(as_markdown(), end="")
