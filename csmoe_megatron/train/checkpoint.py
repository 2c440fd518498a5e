"""Save and resume with megatron-core dist_checkpointing, atomically.

Layout under <run.dir>/checkpoints/:
  iter_0000100/     a complete checkpoint (model, optimizer, scheduler, progress, RNG,
                    and the tokenizer the run used)
  latest            text file naming the newest complete checkpoint (replaced atomically)
A save writes into iter_N.partial/ and is renamed to iter_N/ only after every rank finished,
then `latest` is replaced: a crash at any moment leaves the previous checkpoint untouched and
never named as latest. Old checkpoints beyond keep_last are removed; nothing else is touched.
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


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state["tracker"] = get_cuda_rng_tracker().get_states()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    get_cuda_rng_tracker().set_states(state["tracker"])


def _is_complete(path: Path) -> bool:
    # progress.pt is written last, after every rank's shards (see save_checkpoint).
    return bool(_ITER_RE.match(path.name)) and (path / "progress.pt").is_file()


def latest_checkpoint(ckpt_root: Path, report=None) -> Path | None:
    """The checkpoint to resume from: the one `latest` names, else the newest complete one
    (said through `report`, default warnings.warn: `latest` was lost or damaged by hand);
    None when there is none.

    A `latest` naming something that is not a complete checkpoint, with no complete one to fall
    back to, is refused clearly rather than silently starting from scratch.
    """
    report = report or warnings.warn
    marker = ckpt_root / LATEST
    complete = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and _is_complete(p)) \
        if ckpt_root.is_dir() else []
    if marker.is_file():
        name = marker.read_text().strip()
        if _is_complete(ckpt_root / name):
            return ckpt_root / name
        if not complete:
            raise RuntimeError(f"{marker} names {name!r}, which is not a complete checkpoint; "
                               f"point it at a complete iter_NNNNNNN directory or remove it to "
                               f"start from scratch")
        report(f"{marker} names {name!r}, which is not a complete checkpoint; resuming "
                      f"from the newest complete one, {complete[-1].name}")
    elif complete:
        report(f"{marker} is missing; resuming from the newest complete checkpoint, "
                      f"{complete[-1].name}")
    return complete[-1] if complete else None


def save_checkpoint(ckpt_root: Path, step: int, model_chunks, optimizer, scheduler,
                    progress: dict, keep_last: int, tokenizer_dir: Path | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path. The tokenizer, when
    given, is copied in so that a checkpoint is self-contained."""
    rank = dist.get_rank()
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
    torch.save(_rng_state(), partial / f"rng_rank{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        if tokenizer_dir is not None and tokenizer_dir.is_dir():
            shutil.copytree(tokenizer_dir, partial / "tokenizer")
        torch.save({"scheduler": scheduler.state_dict(), **progress}, partial / "progress.pt")
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
    """Collective. Restores model, optimizer, scheduler and RNG; returns the progress dict."""
    _materialise_optimizer_state(optimizer)
    state = _sharded_state(model_chunks, optimizer, is_loading=True)
    loaded = dist_checkpointing.load(state, str(path))
    if len(model_chunks) == 1:
        _unwrap(model_chunks[0]).load_state_dict(loaded["model"])
    else:
        for i, m in enumerate(model_chunks):
            _unwrap(m).load_state_dict(loaded[f"model{i}"])
    with torch.no_grad():  # fp32 DistributedOptimizer copies into views of leaf params
        optimizer.load_state_dict(loaded["optimizer"])
    _restore_adam_step(optimizer)
    progress = torch.load(path / "progress.pt", weights_only=False)
    scheduler.load_state_dict(progress.pop("scheduler"))
    rng_file = path / f"rng_rank{dist.get_rank():05d}.pt"
    if rng_file.is_file():  # absent when resuming on a different number of ranks
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return progress


def _prune(ckpt_root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    done = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and _is_complete(p))
    for old in done[:-keep_last]:
        shutil.rmtree(old)
