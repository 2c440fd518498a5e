"""`--version` of every console script: this package's, megatron-core's and torch's versions,
read from the installed distributions' metadata (importing megatron or torch would take seconds)."""

from __future__ import annotations

import argparse
from importlib import metadata

from . import __version__


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_line() -> str:
    """e.g. `csmoe-megatron 0.1.0 (megatron-core 0.16.1, torch 2.13.0+cpu)`."""
    return (f"csmoe-megatron {__version__} (megatron-core {_installed('megatron-core')}, "
            f"torch {_installed('torch')})")


class _VersionAction(argparse.Action):
    """argparse's own "version" action, with the line computed only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of csmoe-megatron, megatron-core and torch")
