"""`csmoe-check cuda`: GPU configs pass; defects put back on purpose fail with a message that
names them; host syncs per training step do not grow with the number of MoE layers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _gpu_configs() -> list[str]:
    """Every config a GPU job would run: NCCL backend or bf16."""
    out = []
    for path in sorted((REPO / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if (raw.get("parallel", {}).get("backend") == "nccl"
                or raw.get("train", {}).get("precision") == "bf16"):
            out.append(path.name)
    return out


def _check(config: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csmoe_megatron.check", "cuda", "--config",
                           str(REPO / "configs" / config), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_there_are_gpu_configs_to_check():
    assert NODE_LAYOUT in _gpu_configs()


# The 8-GPU node layout (EP=8 on 8 emulated ranks) is checked once, on gpu_node_competesmoe;
# other GPU configs are checked for their model and training options on EP=2 (2 ranks), which
# keeps the suite short and catches the same option bugs (e.g. a fusion megatron refuses).
NODE_LAYOUT = "gpu_node_competesmoe.yaml"


def _layout_overrides(config: str) -> list[str]:
    raw = yaml.safe_load((REPO / "configs" / config).read_text()) or {}
    expert = raw.get("parallel", {}).get("expert", 1)
    return [] if config == NODE_LAYOUT or expert <= 2 else ["parallel.expert=2"]


@pytest.mark.parametrize("config", _gpu_configs())
def test_gpu_config_passes_the_cuda_check(config):
    proc = _check(config, *_layout_overrides(config))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK on" in proc.stdout and "host syncs in step 2" in proc.stdout


# (defect put back, what the message must name)
DEFECTS = {
    "loss_tracker_on_cpu": ["aten.add_", "cpu", "cuda:", "save_to_aux_losses_tracker"],
    "metrics_reduce_a_cpu_tensor": ["NCCL all_reduce", "on cpu", "int64"],
    "model_left_on_cpu": ["model tensor", "on cpu", "model/build.py"],
    "megatron_fix_only_on_cpu": ["te_general_gemm"],
    "cpu_all_reduce_in_moe_forward": ["NCCL all_reduce", "on cpu", "CompeteSMoELayer"],
    "cpu_tensor_added_to_linear_output": ["mixes devices", "cpu", "cuda:",
                                          "ColumnParallelLinear"],
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_defect_put_back_fails_the_check_by_name(defect):
    proc = _check("cpu_tiny.yaml", "train.precision=bf16", "--setup",
                  f"tests.check.defects:{defect}", timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    message = proc.stderr.splitlines()[0]
    assert message.startswith("csmoe-check cuda: FAILED on rank"), proc.stderr[-2000:]
    for fragment in DEFECTS[defect]:
        assert fragment in message, (fragment, message)


# Sites allowed host reads per MoE layer: megatron's dispatcher reads its split sizes (and
# permutes with data-dependent sizes); the winners-only competition (the default) reads its
# dispatch and its winners' split sizes, once each; the dense-gradient winners combine its
# kept-row counts once.
_PER_LAYER = ("token_dispatcher.py", "winners_combine.py", "winners_only_alltoall.py")


def _syncs(num_layers: int) -> list[dict]:
    from csmoe_megatron.check.cuda_check import run

    small = ["train.precision=bf16", f"model.num_layers={num_layers}", "model.hidden_size=64",
             "model.ffn_hidden_size=64", "model.moe.ffn_hidden_size=32", "model.seq_length=16",
             "train.micro_batch_size=1", "train.global_batch_size=4"]
    result = run(str(REPO / "configs/cpu_tiny.yaml"), small, full_size=True, say=lambda *_: None)
    assert result["ok"], result["ranks"]
    return result["ranks"][0]["host_syncs"]


def _by_site(rows, step, per_layer: bool) -> Counter:
    return Counter({(r["kind"], r["site"]): r["count"] for r in rows
                    if r["step"] == step and any(p in r["site"] for p in _PER_LAYER) == per_layer})


def test_host_syncs_per_step_do_not_grow_with_moe_layers():
    two, four = _syncs(2), _syncs(4)
    for step in (0, 1):  # a router step, then a competition step in every layer
        assert _by_site(two, step, per_layer=False) == _by_site(four, step, per_layer=False), step
        assert not any("object collective" in r["kind"] for r in two + four if r["step"] == step)
    # The winners-only competition reads two sets of split sizes per competing layer and
    # micro-batch (2 micro-batches a step per data-parallel rank here), nothing else of it.
    for rows, layers in ((two, 2), (four, 4)):
        compete = [r for r in rows if r["step"] == 1 and "winners_only" in r["site"]]
        assert sum(r["count"] for r in compete) == layers * 2 * 2, compete
        assert all("compete" in r["site"] for r in compete), compete
