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

from ..config.load import ConfigError
from ..model import unwrap
from . import checkpoint_manifest as manifest
from . import layout as layouts
from .checkpoint_files import (LEGACY_PROGRESS, PROGRESS, CheckpointError, SafeCommonLoadStrategy,
                               parse_legacy_progress, parse_progress, parse_rng, progress_bytes,
                               rng_bytes, rng_file, set_rng_state)
from .checkpoint_manifest import MANIFEST
from .checkpoint_optimizer import (LEGACY_OPTIMIZER_FORMAT, OPTIMIZER_FORMAT, FittedCommonLoad,
                                   adam_steps_set_aside, materialise_optimizer_state,
                                   restore_adam_step)
from .distributed import seed_rngs

_ITER_RE = re.compile(r"^iter_(\d{7})$")
LATEST = "latest"


# DDP's own sharded_state_dict prefixes "module."; the unwrapped model's keys load back.
_unwrap = unwrap


def _model_state(model_chunks: list) -> dict:
    model_chunks = [_unwrap(m) for m in model_chunks]
    if len(model_chunks) == 1:
        return {"model": model_chunks[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(model_chunks)}


def _sharded_state(model_chunks, optimizer, is_loading: bool, optimizer_format: dict) -> dict:
    state = _model_state(model_chunks)
    # The nested {"model0": ..., "model1": ...} dict: chunks' local key names overlap.
    state["optimizer"] = optimizer.sharded_state_dict(dict(state), is_loading=is_loading,
                                                      metadata=dict(optimizer_format))
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
    progress = {**progress, "optimizer_format": OPTIMIZER_FORMAT}
    progress_json = progress_bytes(scheduler.state_dict(), progress)  # refuses on every rank
    final = ckpt_root / f"iter_{step:07d}"
    partial = ckpt_root / f"iter_{step:07d}.partial"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if partial.exists():  # left by a crashed save: never a complete checkpoint
            shutil.rmtree(partial)
        partial.mkdir()
    dist.barrier()
    state = _sharded_state(model_chunks, optimizer, is_loading=False,
                           optimizer_format=OPTIMIZER_FORMAT)
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


def load_checkpoint(path: Path, model_chunks, optimizer, scheduler, layout: dict | None = None,
                    seed: int | None = None) -> dict:
    """Collective. Restores model, optimizer, scheduler and RNG; returns the progress dict.
    `path` should come from latest_checkpoint, which verified it and read `.metadata` and the
    .distcp byte items as data before torch.distributed.checkpoint unpickles them here.

    `layout` (train/layout.current_layout) is this launch's: a change the checkpoint cannot
    follow is a ConfigError before anything is loaded; any other change loads the tensors
    resharded and, instead of the per-rank RNG files, re-seeds every rank from `seed` and the
    step (layout.resume_seed)."""
    scheduler_state, progress = _read_progress(path)
    saved = progress.get("layout")
    same_layout = True
    if layout is not None:
        problem = layouts.refusal(saved, layout, path, layouts.legacy_world_size(path, progress))
        if problem:
            raise ConfigError(problem)
        same_layout = layouts.changes(saved, layout) == [] if saved is not None \
            else layouts.rng_files(path) == layout["world_size"]
    rng_path = path / rng_file(dist.get_rank())
    rng = parse_rng(rng_path.read_bytes(), rng_path) \
        if same_layout and rng_path.is_file() else None
    materialise_optimizer_state(optimizer)
    optimizer_format = progress.get("optimizer_format", LEGACY_OPTIMIZER_FORMAT)
    if optimizer_format not in (OPTIMIZER_FORMAT, LEGACY_OPTIMIZER_FORMAT):
        raise CheckpointError(f"{path / PROGRESS}: unknown optimizer_format {optimizer_format!r}")
    state = _sharded_state(model_chunks, optimizer, is_loading=True,
                           optimizer_format=optimizer_format)
    common = SafeCommonLoadStrategy() if optimizer_format != OPTIMIZER_FORMAT \
        else FittedCommonLoad(optimizer)
    loaded = dist_checkpointing.load(state, str(path), common_strategy=common)
    if len(model_chunks) == 1:
        _unwrap(model_chunks[0]).load_state_dict(loaded["model"])
    else:
        for i, m in enumerate(model_chunks):
            _unwrap(m).load_state_dict(loaded[f"model{i}"])
    with torch.no_grad(), adam_steps_set_aside(optimizer):
        # fp32 DistributedOptimizer copies into views of leaf params (no_grad)
        optimizer.load_state_dict(loaded["optimizer"])
    restore_adam_step(optimizer)
    scheduler.load_state_dict(scheduler_state)
    if rng is not None:
        set_rng_state(rng)
    elif not same_layout and seed is not None:
        seed_rngs(layouts.resume_seed(seed, progress["step"]))
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
