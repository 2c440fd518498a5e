"""The example configs shipped inside the package: the source tree's configs/, installed as
`csmoe_megatron.configs`, so `--config cpu_tiny` works from any directory after `pip install`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def packaged_configs() -> dict[str, Path]:
    """Name (the file name without .yaml) -> file of every shipped config, sorted by name."""
    try:
        folder = resources.files("csmoe_megatron.configs")
    except ModuleNotFoundError:  # an install without them: --config takes files only
        return {}
    files = sorted(Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml"))
    return {f.name.removesuffix(".yaml"): f for f in files}


def describe(path: Path, width: int = 76) -> str:
    """The first sentence of a config's leading comment (what the experiment is), shortened."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    sentence = " ".join(header).split(". ")[0]
    return sentence if len(sentence) <= width else sentence[:width - 3].rsplit(" ", 1)[0] + " ..."


def listing() -> str:
    """`csmoe-train --list-configs`: where the shipped configs are, then a line per config."""
    configs = packaged_configs()
    if not configs:
        return "no packaged configs found (is csmoe-megatron installed?)"
    width = max(map(len, configs))
    lines = [f"{name:<{width}}  {describe(path)}" for name, path in configs.items()]
    folder = next(iter(configs.values())).parent
    return "\n".join([f"packaged configs (in {folder}); use one with --config NAME:", *lines])
