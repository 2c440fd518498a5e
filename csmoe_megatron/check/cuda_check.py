"""`csmoe-check cuda`: a config's GPU code path, driven on a CPU-only machine.

Each rank of the config's layout runs in its own process with the emulated CUDA runtime
(cuda_runtime.py), logical devices (emulated_cuda.py) and NCCL-like groups (emulated_nccl.py),
and without our CPU compatibility layer, so our code and megatron-core take their GPU branches.
Each rank then runs the real trainer (train/loop.py) twice:
  1. steps 1-3 from scratch: a router step, a competition step in every MoE layer, a router
     step; an evaluation; a checkpoint save;
  2. resume from that checkpoint and run step 4, again competing, and save.
Steps 1 and 2 are plain training steps (logged, nothing else), the ones host syncs are
compared on (tests/check).
After the model is built, every parameter and buffer must be on the rank's GPU. Any op that
mixes devices, or a collective on an NCCL group given a CPU tensor, stops the check with a
message naming the op, the devices, the module and our code's line. Host syncs are counted per
step and call site.

By default sizes shrink (layers, widths, sequence, batch, vocabulary) while the layout, dtype,
router, dispatcher, experts, top-K and features stay the config's; `--full-size` keeps all.
Data are megatron's mock tokens (no files needed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..config import load_config, to_dict, validate
from ..config.load import from_dict
from ..config.schema import ExperimentConfig

COMPETE_STEPS = (1, 3)  # 0-based steps that compete in every MoE layer
PHASE_STEPS = (3, 4)  # the trainer runs to step 3, then resumes and runs to step 4


def minimal_world(cfg: ExperimentConfig) -> int:
    """Fewest ranks that hold the config's layout."""
    p = cfg.parallel
    dense = p.tensor * p.pipeline * p.context
    expert = (p.expert_tensor or p.tensor) * p.expert * p.pipeline
    return dense * expert // math.gcd(dense, expert)


def shrink(cfg: ExperimentConfig, world: int) -> tuple[ExperimentConfig, list[str]]:
    """Small sizes that keep the layout and the features; returns the notes on what changed."""
    cfg = dataclasses.replace(cfg)  # shallow; sections are replaced below
    m, p = cfg.model, cfg.parallel
    tp, etp = p.tensor, p.expert_tensor or p.tensor
    chunks = p.pipeline * (p.virtual_pipeline or 1)
    heads = max(tp, 2) * (2 if tp == 1 else 1)
    groups = m.num_query_groups and max(tp, heads // max(1, m.num_attention_heads //
                                                         m.num_query_groups))
    layers = chunks * max(m.moe.layer_freq, 1) * (2 if chunks == 1 else 1)
    model = dataclasses.replace(
        m, num_layers=min(m.num_layers, layers), hidden_size=16 * heads, num_attention_heads=heads,
        num_query_groups=groups, ffn_hidden_size=32 * tp, seq_length=16 * tp, vocab_size=256,
        moe=dataclasses.replace(m.moe, ffn_hidden_size=16 * etp))
    notes = [f"model.{k}: {getattr(m, k)} -> {getattr(model, k)}"
             for k in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                       "ffn_hidden_size", "seq_length") if getattr(m, k) != getattr(model, k)]
    if m.moe.ffn_hidden_size != model.moe.ffn_hidden_size:
        notes.append(f"model.moe.ffn_hidden_size: {m.moe.ffn_hidden_size} -> "
                     f"{model.moe.ffn_hidden_size}")
    dp = world // (tp * p.pipeline * p.context)
    micro = max(2, p.pipeline)
    train = dataclasses.replace(cfg.train, micro_batch_size=1, global_batch_size=micro * dp)
    notes.append(f"train.global_batch_size: {cfg.train.global_batch_size} -> "
                 f"{train.global_batch_size} (micro-batch 1, {micro} a step per data-parallel "
                 f"rank)")
    return dataclasses.replace(cfg, model=model, train=train), notes


def check_config(cfg: ExperimentConfig, run_dir: Path, steps: int) -> ExperimentConfig:
    """The check's run: mock data, its own run dir, the given steps, save at the end, every
    step logged, an evaluation and a routing picture at step 3."""
    raw = to_dict(cfg)
    raw["model"]["vocab_size"] = raw["model"]["vocab_size"] or 256
    raw["data"].update(source="mock", prefixes=[], tokenizer=None, cache_dir=str(run_dir / "cache"))
    raw["train"].update(steps=steps, tokens=None, lr_warmup_steps=1, eval_interval=3,
                        eval_iters=1, exit_after_steps=None, debug_inject_nan_at_step=None)
    raw["logging"].update(interval=1, routing_images_interval=3)
    raw["checkpoint"].update(save_interval=0, resume=True, save_at_end=True, keep_last=2)
    raw["run"]["dir"] = str(run_dir)
    raw["parallel"]["collective_timeout_s"] = 120.0
    return from_dict(raw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: str, overrides: list[str], world: int | None = None, full_size: bool = False,
        setup: str | None = None, work_dir: str | None = None, timeout_s: float = 900.0,
        say=print) -> dict:
    """Run the check; returns {"ok", "world", "notes", "ranks": [per-rank reports]}."""
    cfg = load_config(config, overrides)
    world = world or minimal_world(cfg)
    validate(cfg, world)
    notes = [] if full_size else shrink(cfg, world)[1]
    cfg = cfg if full_size else shrink(cfg, world)[0]
    validate(cfg, world)
    owned = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="csmoe-check-cuda-"))
    work.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.rmtree(work / "run", ignore_errors=True)  # a kept work dir from an earlier check
    for old in work.glob("report*.json"):
        old.unlink()
    spec = {"config": to_dict(cfg), "run_dir": str(work / "run"), "setup": setup,
            "world": world, "ports": [_free_port(), _free_port()]}
    (work / "spec.json").write_text(json.dumps(spec))
    p = cfg.parallel
    say(f"csmoe-check cuda: {config}: {world} emulated GPU ranks (TP={p.tensor} PP={p.pipeline} "
        f"EP={p.expert} ETP={p.expert_tensor or p.tensor}), {cfg.train.precision}, router "
        f"{cfg.model.moe.router}, dispatcher {cfg.model.moe.token_dispatcher}")
    for note in notes:
        say(f"  shrunk {note}")
    reports = _launch(work, world, timeout_s)
    ok = all(r.get("ok") for r in reports)
    if owned and ok:
        shutil.rmtree(work, ignore_errors=True)
    return {"ok": ok, "world": world, "notes": notes, "ranks": reports, "work_dir": str(work)}


def _launch(work: Path, world: int, timeout_s: float) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    env.pop("TORCHELASTIC_RUN_ID", None)
    procs = []
    for rank in range(world):
        log = open(work / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "csmoe_megatron.check.cuda_check", str(work), str(rank)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=log,
            stderr=subprocess.STDOUT))
    deadline = time.time() + timeout_s
    while any(p.poll() is None for p in procs):
        failed = any(p.poll() not in (None, 0) for p in procs)
        if failed or time.time() > deadline:
            time.sleep(5 if failed else 0)  # let the failing rank's peers write their reports
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    for p in procs:
        p.wait()
    reports = []
    for rank, p in enumerate(procs):
        path = work / f"report{rank}.json"
        if path.is_file():
            reports.append(json.loads(path.read_text()))
        else:
            tail = (work / f"rank{rank}.log").read_text()[-3000:]
            reason = "timed out" if time.time() > deadline else f"exit code {p.returncode}"
            reports.append({"rank": rank, "ok": False, "error": f"rank {rank} {reason} without "
                            f"a report; its log ends:\n{tail}"})
    return reports


# ---- inside one emulated rank ------------------------------------------------------------

def _worker(work: Path, rank: int) -> int:
    spec = json.loads((work / "spec.json").read_text())
    world = spec["world"]
    import torch._dynamo  # noqa: F401  (it indexes torch's functions: before they are replaced)

    from . import cuda_runtime, emulated_cuda, emulated_nccl, host_syncs, where

    cuda_runtime.install(rank, world)
    emulated_cuda.install(rank)
    emulated_nccl.install()
    where.track_modules()
    report = {"rank": rank, "ok": False, "phases": []}
    try:
        if spec["setup"]:
            import importlib

            module, _, name = spec["setup"].partition(":")
            getattr(importlib.import_module(module), name)()
        _watch_model_build()
        from ..moe import context
        from ..train.loop import run_training

        cfg = from_dict(spec["config"])
        for steps, port in zip(PHASE_STEPS, spec["ports"]):
            os.environ["MASTER_PORT"] = str(port)
            context.reset()  # set-up syncs are not counted as any step's
            context.force_competition(COMPETE_STEPS)
            start = time.time()
            run_training(check_config(cfg, Path(spec["run_dir"]), steps))
            report["phases"].append({"steps": steps, "seconds": round(time.time() - start, 1)})
        report["ok"] = True
    except Exception as e:  # the report carries the message; the log the traceback
        import traceback

        traceback.print_exc()
        report["error"] = f"{type(e).__name__}: {e}"
    report["host_syncs"] = host_syncs.as_rows()
    (work / f"report{rank}.json").write_text(json.dumps(report))
    return 0 if report["ok"] else 1


_ON_GPU = ("after the model is built and wrapped, every parameter, buffer and gradient buffer "
           "must be on this rank's GPU (model/build.py moves the chunks, train/ddp.py wraps them)")


def _watch_model_build() -> None:
    """After the trainer built and wrapped its model, every parameter, gradient buffer and
    module buffer must be on this rank's GPU; also names the modules for messages."""
    from ..train import loop
    from . import where
    from .logical_devices import require_device

    build = loop.build_optimizer

    def build_optimizer(cfg, chunks, steps):
        for i, chunk in enumerate(chunks):
            where.name_modules(chunk, prefix=f"chunk{i}" if len(chunks) > 1 else "")
            for name, tensor in list(chunk.named_parameters()) + list(chunk.named_buffers()):
                grad = getattr(tensor, "main_grad", None)
                require_device([tensor] + ([grad] if grad is not None else []), "cuda",
                               f"model tensor {name} (or its gradient buffer)", _ON_GPU)
        return build(cfg, chunks, steps)

    loop.build_optimizer = build_optimizer


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1]), int(sys.argv[2])))
