"""launch/gpu_smoke.sh, the one-GPU smoke test (docs/benchmarks.md): on a CUDA machine it must
train configs/gpu_smoke.yaml, lower the loss and resume to the same losses; without CUDA it
must refuse clearly, before training anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "gpu_smoke.sh"
CUDA = torch.cuda.is_available()


def _smoke(out: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False); "
                                     "on a GPU machine run launch/gpu_smoke.sh")
def test_gpu_smoke_trains_and_resumes(tmp_path):
    result = _smoke(tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["missing_steps"] == []
    assert summary["loss_fell"] and summary["loss_last5_mean"] < summary["loss_first5_mean"]
    assert summary["resume_matched"]
    assert summary["resume_max_abs_loss_diff_16_30"] <= summary["resume_tolerance"]
    assert summary["competition_steps"] > 0 and summary["router_steps"] > 0
    assert summary["mem_peak_gib"] > 0


@pytest.mark.skipif(CUDA, reason="CUDA is available: test_gpu_smoke_trains_and_resumes runs")
def test_gpu_smoke_refuses_without_cuda(tmp_path):
    result = _smoke(tmp_path / "out", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "this smoke test needs one CUDA GPU" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran
