"""The package as users install it: what the wheel holds, the import names it takes, and the
requirements it states (ranges) against the exact versions CI tests (constraints.txt)."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Installed names of the folders pyproject.toml maps (package-dir).
MAPPED = {"tokenizer": "csmoe_tokenizer", "configs": "csmoe_megatron/configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """`pip wheel --no-deps` of a clean copy of the sources (a stale build/ cannot slip in)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tmp / "src", ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "runs", "__pycache__"))
    # The venv's setuptools builds it: no download, the same backend pyproject.toml asks for.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp / "dist"), str(tmp / "src")],
                   check=True, capture_output=True, text=True, timeout=300)
    (path,) = (tmp / "dist").glob("csmoe_megatron-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_our_names_only(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"csmoe_megatron", "csmoe_tokenizer",
                    f"csmoe_megatron-{metadata.version('csmoe-megatron')}.dist-info"}


def test_the_wheel_holds_every_source_file_and_the_configs(wheel):
    """pyproject.toml lists the packages: a new subpackage left off the list fails here."""
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "csmoe_megatron").rglob("*.py")}
    for folder, installed in MAPPED.items():
        expected |= {f"{installed}/{p.relative_to(REPO / folder).as_posix()}"
                     for pattern in ("*.py", "*.yaml") for p in (REPO / folder).glob(pattern)}
    files = {name for name in wheel.namelist() if ".dist-info/" not in name}
    assert files == expected
    assert "csmoe_megatron/configs/cpu_tiny.yaml" in files


def test_the_wheel_requires_ranges_and_names_its_scripts(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [Requirement(r) for r in
                email.message_from_bytes(wheel.read(meta)).get_all("Requires-Dist")]
    pinned = [str(r) for r in requires if any(s.operator == "==" for s in r.specifier)]
    assert requires and pinned == []
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "csmoe-tokenizer = csmoe_tokenizer.cli:main" in wheel.read(entry_points).decode()


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): str(r.specifier) for r in pins}


def _requirements(dist: str, extras: set[str]) -> set[str]:
    """Names of what installing dist[extras] pulls in, here, transitively."""
    seen, todo = set(), [(dist, extras)]
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            active = any(req.marker is None or req.marker.evaluate({"extra": e})
                         for e in extras | {""})
            if active and canonicalize_name(req.name) not in seen:
                seen.add(canonicalize_name(req.name))
                todo.append((req.name, set(req.extras)))
    return seen


def test_constraints_pin_everything_the_cpu_setup_installs():
    pins = _pins()
    assert all(spec.startswith("==") for spec in pins.values()), pins
    installed = _requirements("csmoe-megatron", {"dev"})
    assert installed <= set(pins), f"not in constraints.txt: {sorted(installed - set(pins))}"
    for name in installed:
        version = metadata.version(name).split("+")[0]  # torch's +cpu
        assert pins[name] == f"=={version}", (name, version)


def test_the_lower_bounds_are_the_versions_ci_tests():
    pins = _pins()
    for text in metadata.requires("csmoe-megatron"):
        req = Requirement(text)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        if req.marker is None and req.name not in ("numpy", "torch"):  # numpy: as before
            assert lower and pins[canonicalize_name(req.name)] == f"=={lower[0]}", text


def test_nothing_imports_the_tokenizer_by_its_folder_name():
    old = re.compile(r"^\s*(from|import)\s+tokenizer\b", re.M)
    sources = [*REPO.glob("csmoe_megatron/**/*.py"), *REPO.glob("tokenizer/*.py"),
               *REPO.glob("tests/**/*.py")]
    assert [str(p) for p in sources if old.search(p.read_text())] == []


def test_a_stray_tokenizer_module_does_not_matter(tmp_path):
    """A user's tokenizer.py (or PyPI's "tokenizer") first on sys.path is never imported."""
    (tmp_path / "tokenizer.py").write_text("raise ImportError('the stray tokenizer was imported')")
    code = ("import sys, csmoe_megatron.bench.preprocess, csmoe_megatron.data.default_corpus, "
            "csmoe_megatron.train.data_setup, csmoe_tokenizer.cli; "
            "assert 'tokenizer' not in sys.modules; print(csmoe_tokenizer.__file__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == REPO / "tokenizer" / "__init__.py"


def test_an_uninstalled_checkout_maps_the_folders_too(tmp_path):
    """launch/ runs a checkout that is not pip-installed from PYTHONPATH: with the installed
    names hidden (-S: no site-packages, no editable finder), the checkout still provides them."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = ("import sys; sys.path[1:1] = " + repr(site) + "; import csmoe_megatron, csmoe_tokenizer, "
            "csmoe_megatron.configs; print(csmoe_tokenizer.__file__); "
            "print(csmoe_megatron.configs.__file__)")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(REPO / "tokenizer" / "__init__.py"),
                                     str(REPO / "configs" / "__init__.py")]
