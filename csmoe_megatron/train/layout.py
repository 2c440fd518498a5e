"""Resume on another parallel layout: what a checkpoint records of the layout that wrote it,
which changes a resume accepts, and what happens to the per-rank RNG state when it changes.

A checkpoint's model and optimizer tensors are stored as global (layout-free) tensors keyed
by model parameter (checkpoint_optimizer.OPTIMIZER_FORMAT), so TP, SP, PP, VPP, EP, ETP and the
data-parallel size (the number of ranks) may change between launches.
What may not change is the global batch size: the data position (consumed samples) and the
LR schedule count samples of it. The RNG files are one per rank and mean nothing on another
layout: on any layout change they are not read, and every rank re-seeds from train.seed and the
step (resume_seed), so a resumed run is still a pure function of its config.

Standard library only at import time: config/inputs.py runs `refusal` before any process
group exists or anything is written; checkpoint.load_checkpoint runs it again on the
checkpoint it actually loads (after any fallback).
"""

from __future__ import annotations

from pathlib import Path

# The parallel.* keys a checkpoint records (with the world and DP sizes and the global batch).
_PARALLEL_KEYS = ("tensor", "pipeline", "virtual_pipeline", "expert", "expert_tensor",
                  "context", "sequence_parallel", "distributed_optimizer")


# Recorded keys a resume may not change, and why.
_REFUSED = {
    "distributed_optimizer": "the distributed and the plain optimizer save different state "
                             "(the distributed one saves its fp32 main parameters too)",
    "context": "context parallelism is not supported",
}


def current_layout(cfg, world_size: int) -> dict:
    """The record saved with every checkpoint (progress.json "layout")."""
    p = cfg.parallel
    record = {key: getattr(p, key) for key in _PARALLEL_KEYS}
    record["expert_tensor"] = p.expert_tensor or p.tensor
    record["world_size"] = world_size
    record["data_parallel"] = world_size // (p.tensor * p.pipeline * p.context)
    record["global_batch_size"] = cfg.train.global_batch_size
    return record


def _name(key: str) -> str:
    if key == "global_batch_size":
        return "train.global_batch_size"
    if key in ("world_size", "data_parallel"):
        return f"the {key.replace('_', ' ')}"
    return f"parallel.{key}"


def changes(saved: dict, now: dict) -> list[str]:
    """'key saved -> now' for every recorded key that differs."""
    return [f"{_name(k)} {saved.get(k)} -> {now[k]}" for k in now
            if k in saved and saved[k] != now[k]]


def refusal(saved: dict | None, now: dict, ckpt_dir: Path, legacy_world: int | None) -> str | None:
    """Why the checkpoint in `ckpt_dir` (progress "layout" `saved`, None before checkpoints
    recorded it) cannot be resumed on layout `now`; None when it can."""
    fix_new = "or start a new run.dir (or set checkpoint.resume=false)"
    if saved is None:
        # Written before the layout was recorded (legacy_world_size): its distributed optimizer
        # state is in megatron's DP-bound format, its layout known only by its RNG files.
        if legacy_world is not None and legacy_world != now["world_size"]:
            return (f"cannot resume {ckpt_dir} with {now['world_size']} ranks: it was written "
                    f"by {legacy_world} ranks before checkpoints recorded their parallel layout, "
                    f"and such a checkpoint resumes only on the layout that wrote it. Fix: "
                    f"launch {legacy_world} ranks with the parallel section it was written "
                    f"with, {fix_new}")
        return None
    if saved.get("global_batch_size") != now["global_batch_size"]:
        return (f"cannot resume {ckpt_dir}: train.global_batch_size changed from "
                f"{saved.get('global_batch_size')} (the checkpoint) to "
                f"{now['global_batch_size']}; the data position and the learning-rate schedule "
                f"count samples of the saved batch size. Fix: set train.global_batch_size="
                f"{saved.get('global_batch_size')} (the parallel layout and "
                f"train.micro_batch_size may change), {fix_new}")
    for key, why in _REFUSED.items():
        if saved.get(key) != now[key]:
            return (f"cannot resume {ckpt_dir}: parallel.{key} changed from {saved.get(key)} "
                    f"(the checkpoint) to {now[key]}; {why}. Fix: set parallel.{key}="
                    f"{str(saved.get(key)).lower()}, {fix_new}")
    return None


def rng_files(ckpt_dir: Path) -> int:
    """How many ranks wrote the checkpoint: one RNG file each."""
    return sum(1 for _ in Path(ckpt_dir).glob("rng_rank*.pt"))


def legacy_world_size(ckpt_dir: Path, progress: dict) -> int | None:
    """The number of ranks that wrote a checkpoint of the old format, which resumes only on its
    own layout; None for a checkpoint whose tensors are layout-free (it has an optimizer_format,
    with or without a layout record, e.g. one written by a conversion tool)."""
    if "optimizer_format" in progress:
        return None
    return rng_files(ckpt_dir) or None


def resume_seed(seed: int, step: int) -> int:
    """The seed every rank re-seeds with after a resume on another layout (its RNG files do not
    map onto the new ranks): a pure function of train.seed and the step, never seed itself, so
    the resumed steps do not replay the random streams of step 0."""
    return (seed + 1_000_003 * (step + 1)) % (2**31 - 1)
