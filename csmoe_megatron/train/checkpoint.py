"""Save and resume with megatron-core dist_checkpointing, atomically.

Layout under <run.dir>/checkpoints/:
  iter_0000100/     a complete checkpoint (model, optimizer, scheduler, progress, RNG,
                    and the tokenizer the run used)
  latest            text file naming the newest complete checkpoint (replaced atomically)
A save writes into iter_N.partial/, then every rank hashes its share of the files and rank 0
writes manifest.json last (checkpoint_manifest); only then is it renamed to iter_N/ and `latest`
replaced: a crash at any moment leaves the previous checkpoint untouched and never named as
latest. Resume verifies the manifest and falls back to the newest checkpoint that verifies.
Every file is read as data, never as code (checkpoint_files). Old checkpoints beyond keep_last
are removed; nothing else is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from ..model import unwrap
from . import checkpoint_manifest as manifest
from .checkpoint_files import (LEGACY_PROGRESS, PROGRESS, CheckpointError, SafeCommonLoadStrategy,
                               parse_legacy_progress, parse_progress, parse_rng, progress_bytes,
                               rng_bytes, rng_file, set_rng_state)
from .checkpoint_manifest import MANIFEST

# Distributed-optimizer state as megatron-LM saves it by default: parallel, no gathering; it
# reshards across TP/PP/EP but keeps the DP size (what a restarted job has).
_CKPT_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
_ITER_RE = re.compile(r"^iter_(\d{7})$")
LATEST = "latest"


# DDP's own sharded_state_dict prefixes "module."; the unwrapped model's keys load back.
_unwrap = unwrap


def _model_state(model_chunks: list) -> dict:
    model_chunks = [_unwrap(m) for m in model_chunks]
    if len(model_chunks) == 1:
        return {"model": model_chunks[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(model_chunks)}


def _sharded_state(model_chunks, optimizer, is_loading: bool) -> dict:
    state = _model_state(model_chunks)
    # The nested {"model0": ..., "model1": ...} dict: chunks' local key names overlap.
    state["optimizer"] = optimizer.sharded_state_dict(dict(state), is_loading=is_loading,
                                                      metadata=_CKPT_METADATA)
    return state


def _is_complete(path: Path) -> bool:
    """A finished save: its manifest was written (or, before manifests, its progress.pt)."""
    return bool(_ITER_RE.match(path.name)) and path.is_dir() and (
        (path / MANIFEST).is_file() or (path / LEGACY_PROGRESS).is_file())


def _read_marker(marker: Path) -> tuple[str | None, str | None]:
    """(name in `latest`, why it cannot be used) — a damaged marker is a reason, not a crash."""
    if not marker.is_file():
        return None, f"{marker} is missing"
    try:
        name = marker.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"{marker} is unreadable ({error})"
    if not _ITER_RE.match(name) or not _is_complete(marker.parent / name):
        return name, f"{marker} names {name!r}, which is not a complete checkpoint"
    return name, None


def latest_checkpoint(ckpt_root: Path, report=None) -> Path | None:
    """The checkpoint to resume from: the one `latest` names when it verifies, else the newest
    one that verifies, said once through `report` (default warnings.warn) with every reason;
    None when there is no checkpoint at all. Collective under torch.distributed (every rank
    checks its share of the files, see checkpoint_manifest.verify).

    Checkpoints exist but none verifies, or `latest` names one that does not exist and there is
    no other: one CheckpointError listing why, rather than silently starting from scratch.
    """
    report = report or warnings.warn
    rank = dist.get_rank() if dist.is_initialized() else 0
    marker = ckpt_root / LATEST
    complete = sorted((p for p in ckpt_root.iterdir() if _is_complete(p)), reverse=True) \
        if ckpt_root.is_dir() else []
    name, why = _read_marker(marker)
    order = _agreed(sorted(complete, key=lambda p: p.name != name), ckpt_root)  # `latest`'s first
    if not order and not marker.is_file():
        return None
    reasons = [why] if why and order else []
    for path in order:
        problem = manifest.verify(path)
        if problem is None:
            notes = [f"resuming from {path.name}, the newest checkpoint that verifies: "
                     + "; ".join(reasons)] if reasons else []
            if manifest.is_legacy(path):
                notes.append(f"{path.name} was written before checkpoints carried a manifest: "
                             f"its files are read as data but not checked against checksums")
            if notes and rank == 0:
                report(". ".join(notes))
            return path
        reasons.append(f"{path.name}: {problem}")
    if not order:
        reasons = [why]
    raise CheckpointError(
        f"cannot resume from {ckpt_root}: " + "; ".join(reasons) + ". Fix: restore a complete "
        f"checkpoint (iter_NNNNNNN with its manifest.json), or remove {ckpt_root} (or set "
        f"checkpoint.resume=false) to start from scratch")


def _agreed(order: list[Path], ckpt_root: Path) -> list[Path]:
    """Rank 0's list of candidates on every rank: each is verified collectively, and a shared
    file system may list a directory differently (stale) on different nodes."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return order
    from ..device import current_device

    steps = torch.full((len(order) + 1,) if dist.get_rank() == 0 else (1,), -1,
                       dtype=torch.int64, device=current_device())
    if dist.get_rank() == 0:
        steps[0] = len(order)
        steps[1:] = torch.tensor([int(p.name[5:]) for p in order], dtype=torch.int64)
    count = steps[:1].clone()
    dist.broadcast(count, src=0)
    if dist.get_rank() != 0:
        steps = torch.empty(int(count.item()) + 1, dtype=torch.int64, device=current_device())
    dist.broadcast(steps, src=0)
    return [ckpt_root / f"iter_{step:07d}" for step in steps[1:].tolist()]


def save_checkpoint(ckpt_root: Path, step: int, model_chunks, optimizer, scheduler,
                    progress: dict, keep_last: int, tokenizer_dir: Path | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path. The tokenizer, when
    given, is copied in so that a checkpoint is self-contained."""
    rank = dist.get_rank()
    progress_json = progress_bytes(scheduler.state_dict(), progress)  # refuses on every rank
    final = ckpt_root / f"iter_{step:07d}"
    partial = ckpt_root / f"iter_{step:07d}.partial"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if partial.exists():  # left by a crashed save: never a complete checkpoint
            shutil.rmtree(partial)
        partial.mkdir()
    dist.barrier()
    state = _sharded_state(model_chunks, optimizer, is_loading=False)
    dist_checkpointing.save(state, str(partial))
    # Non-sharded state: scheduler and progress are identical on all ranks; RNG is per rank.
    (partial / rng_file(rank)).write_bytes(rng_bytes())
    dist.barrier()
    if rank == 0:
        if tokenizer_dir is not None and tokenizer_dir.is_dir():
            shutil.copytree(tokenizer_dir, partial / "tokenizer")
        (partial / PROGRESS).write_bytes(progress_json)
    dist.barrier()
    manifest.write_part(partial)  # each rank hashes its own shards while they are cached
    dist.barrier()
    if rank == 0:
        manifest.merge_parts(partial)  # written last: its presence marks a complete save
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        tmp = ckpt_root / (LATEST + ".tmp")
        tmp.write_text(final.name + "\n")
        os.replace(tmp, ckpt_root / LATEST)
        _prune(ckpt_root, keep_last)
    dist.barrier()
    return final


def _materialise_optimizer_state(optimizer) -> None:
    """Without Apex/TE, megatron's DistributedOptimizer.state_dict() needs Adam state to exist
    (it reads each param's 'step'), which torch creates only at the first step. Use megatron's
    own dummy-step initialiser; the loaded checkpoint then overwrites params and state."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and len(opt.optimizer.state) == 0:
            opt._init_optimizer_states_with_dummy_values()


def _restore_adam_step(optimizer) -> None:
    """torch.optim.Adam keeps its step count per parameter; megatron's DistributedOptimizer
    (without Apex/TE) restores it only into param_groups["step"], leaving the per-parameter
    count at the dummy step's 1, which changes bias correction after a resume. Copy it back."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        for group in opt.optimizer.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = opt.optimizer.state.get(param)
                if state and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype)


def load_checkpoint(path: Path, model_chunks, optimizer, scheduler) -> dict:
    """Collective. Restores model, optimizer, scheduler and RNG; returns the progress dict.
    `path` should come from latest_checkpoint, which verified it and read `.metadata` and the
    .distcp byte items as data before torch.distributed.checkpoint unpickles them here."""
    scheduler_state, progress = _read_progress(path)
    rng_path = path / rng_file(dist.get_rank())
    # Absent when resuming on a different number of ranks.
    rng = parse_rng(rng_path.read_bytes(), rng_path) if rng_path.is_file() else None
    _materialise_optimizer_state(optimizer)
    state = _sharded_state(model_chunks, optimizer, is_loading=True)
    loaded = dist_checkpointing.load(state, str(path), common_strategy=SafeCommonLoadStrategy())
    if len(model_chunks) == 1:
        _unwrap(model_chunks[0]).load_state_dict(loaded["model"])
    else:
        for i, m in enumerate(model_chunks):
            _unwrap(m).load_state_dict(loaded[f"model{i}"])
    with torch.no_grad():  # fp32 DistributedOptimizer copies into views of leaf params
        optimizer.load_state_dict(loaded["optimizer"])
    _restore_adam_step(optimizer)
    scheduler.load_state_dict(scheduler_state)
    if rng is not None:
        set_rng_state(rng)
    return progress


def _read_progress(path: Path) -> tuple[dict, dict]:
    if (path / PROGRESS).is_file():
        return parse_progress((path / PROGRESS).read_bytes(), path / PROGRESS)
    return parse_legacy_progress((path / LEGACY_PROGRESS).read_bytes(), path / LEGACY_PROGRESS)


def _prune(ckpt_root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    done = sorted(p for p in ckpt_root.iterdir() if _is_complete(p))
    for old in done[:-keep_last]:
        shutil.rmtree(old)
