"""A source checkout used without `pip install` (the launch/ scripts put it on PYTHONPATH):
the folders an install maps to other names (pyproject.toml's package-dir) answer to those
names here too, tokenizer/ as csmoe_tokenizer and configs/ as csmoe_megatron.configs.

An installed copy (wheel or editable) is always found first: this finder comes last on
sys.meta_path, and only in a checkout (pyproject.toml beside the package)."""

from __future__ import annotations

import importlib.util
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_MAPPED = {"csmoe_tokenizer": "tokenizer", "csmoe_megatron.configs": "configs"}


class _CheckoutFinder(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _MAPPED:
            return None
        init = _ROOT / _MAPPED[fullname] / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)])


def install() -> None:
    if (_ROOT / "pyproject.toml").is_file() and not any(
            isinstance(finder, _CheckoutFinder) for finder in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder())
