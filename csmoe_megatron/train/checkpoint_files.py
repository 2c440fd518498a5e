"""The files of a checkpoint, written and read as data, never as code.

Ours: progress.json (scheduler state, step, consumed samples and any counters: JSON) and
rng_rankNNNNN.pt (tensors only, read with torch.load(weights_only=True)). Checkpoints written
before this format kept progress in progress.pt; it holds only dicts and numbers and is read with
weights_only=True too, so it needs no allow-list.

megatron-core's and torch.distributed.checkpoint's: common.pt is read with weights_only=True
(SafeCommonLoadStrategy). `.metadata` is unpickled by torch.distributed.checkpoint with plain
pickle.load, and the small byte items inside the .distcp files (layers' `_extra_state`) with
torch.load(weights_only=False); neither can be switched off, so before the library reads them
check_distcp_metadata reads `.metadata` with an unpickler that builds only the checkpoint
metadata types and reads every byte item with weights_only=True, refusing anything else.

Every parser takes the file's bytes and its path and raises CheckpointError naming the file.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import torch
from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

PROGRESS = "progress.json"
LEGACY_PROGRESS = "progress.pt"  # checkpoints written before progress.json
PROGRESS_FORMAT = "csmoe-progress/1"
COMMON = "common.pt"
DISTCP_METADATA = ".metadata"
BACKEND_CONFIG = "metadata.json"


class CheckpointError(RuntimeError):
    """A checkpoint (or one of its files) that cannot be used; the message names the file."""


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


# ---- progress -----------------------------------------------------------------------------

def progress_bytes(scheduler_state: dict, progress: dict) -> bytes:
    """JSON text of the progress file; CheckpointError naming the key that is not plain data
    (convert it with int()/float()/.tolist() where the loop builds the progress dict)."""
    for key, value in {"scheduler": scheduler_state, **progress}.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint progress[{key!r}] is not JSON data "
                                  f"({type(value).__name__}: {error}); store plain numbers, "
                                  f"strings, lists or dicts") from None
    doc = {"format": PROGRESS_FORMAT, "scheduler": scheduler_state, "progress": progress}
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def parse_progress(data: bytes, path: Path) -> tuple[dict, dict]:
    """(scheduler state, progress) from progress.json bytes."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(doc, dict) or doc.get("format") != PROGRESS_FORMAT:
        raise CheckpointError(f"{path} is not a progress file (format {PROGRESS_FORMAT})")
    return _checked_progress(doc.get("scheduler"), doc.get("progress"), path)


def parse_legacy_progress(data: bytes, path: Path) -> tuple[dict, dict]:
    """progress.pt of an older checkpoint: a pickled dict of numbers, read without code."""
    doc = _load_tensors(data, path)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} does not hold a progress dict")
    doc = dict(doc)
    return _checked_progress(doc.pop("scheduler", None), doc, path)


def _checked_progress(scheduler, progress, path: Path) -> tuple[dict, dict]:
    if not isinstance(scheduler, dict) or not isinstance(progress, dict):
        raise CheckpointError(f"{path} lacks the scheduler state or the progress dict")
    for key in ("step", "consumed_samples"):
        value = progress.get(key)
        if type(value) is not int or value < 0:
            raise CheckpointError(f"{path}: {key!r} is {value!r}, not a non-negative integer")
    for key, value in scheduler.items():
        if not (isinstance(value, (str, bool, type(None))) or
                (isinstance(value, (int, float)) and math.isfinite(value))):
            raise CheckpointError(f"{path}: scheduler {key!r} is {value!r}, not a finite number")
    return scheduler, progress


# ---- RNG ----------------------------------------------------------------------------------

def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state["tracker"] = dict(get_cuda_rng_tracker().get_states())
    return state


def rng_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return buffer.getvalue()


def parse_rng(data: bytes, path: Path) -> dict:
    state = _load_tensors(data, path)
    tensors = [state.get("cpu"), state.get("cuda", torch.empty(0, dtype=torch.uint8))] \
        if isinstance(state, dict) else []
    tracker = state.get("tracker") if isinstance(state, dict) else None
    if isinstance(tracker, dict):
        tensors += list(tracker.values())
    if not tensors or not isinstance(tracker, dict) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
            for t in tensors):
        raise CheckpointError(f"{path} does not hold RNG states (uint8 tensors cpu/cuda/tracker)")
    try:  # the CPU generator checks its own state's size and consistency
        torch.Generator().set_state(state["cpu"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: invalid CPU RNG state: {error}") from None
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    get_cuda_rng_tracker().set_states(state["tracker"])


# ---- megatron / torch.distributed.checkpoint files -----------------------------------------

def parse_common(data: bytes, path: Path) -> dict:
    common = _load_tensors(data, path)
    if not isinstance(common, dict):
        raise CheckpointError(f"{path} does not hold megatron's common state dict")
    return common


def parse_backend_config(data: bytes, path: Path) -> dict:
    """metadata.json: which backends wrote the checkpoint. Only torch_dist/torch are accepted:
    another backend would pick a loader this module has not checked."""
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("sharded_backend") != "torch_dist" \
            or config.get("common_backend") != "torch":
        raise CheckpointError(f"{path} does not describe a torch_dist checkpoint: {config!r}")
    return config


def _metadata_types() -> dict:
    from torch.distributed.checkpoint import filesystem, metadata, planner

    names = {metadata: ["Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                        "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                        "_MEM_FORMAT_ENCODING"],
             planner: ["SavePlan", "WriteItem", "WriteItemType", "TensorWriteData"],
             filesystem: ["_StorageInfo"]}
    allowed = {(m.__name__, n): getattr(m, n) for m, ns in names.items() for n in ns}
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for name, value in vars(torch).items():  # dtypes, layouts, memory formats by name
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = value
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    allowed: dict = {}

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type") \
                from None


def parse_distcp_metadata(data: bytes, path: Path):
    """torch.distributed.checkpoint's Metadata, built from the allowed types only."""
    from torch.distributed.checkpoint.metadata import Metadata

    _MetadataUnpickler.allowed = _MetadataUnpickler.allowed or _metadata_types()
    try:
        md = _MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # untrusted bytes: any failure is a refusal
        raise CheckpointError(f"{path} was refused: {type(error).__name__}: {error}") from None
    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict) \
            or not isinstance(md.storage_data, dict):
        raise CheckpointError(f"{path} does not hold torch.distributed.checkpoint metadata")
    return md


def check_byte_items(ckpt_dir: Path, md, path: Path) -> None:
    """Read each byte item the library would unpickle with weights_only=False, with
    weights_only=True instead (so megatron's registered safe types only)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    by_file: dict[str, list] = {}
    try:
        for index, info in md.storage_data.items():
            if isinstance(md.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
                by_file.setdefault(info.relative_path, []).append(info)
    except Exception as error:
        raise CheckpointError(f"{path} has malformed storage entries: {error}") from None
    for rel, infos in sorted(by_file.items()):
        if not isinstance(rel, str) or "/" in rel or rel.startswith("."):
            raise CheckpointError(f"{path} points outside the checkpoint: {rel!r}")
        try:
            with open(ckpt_dir / rel, "rb") as stream:
                for info in infos:
                    if info.transform_descriptors or type(info.offset) is not int \
                            or type(info.length) is not int or info.length > 1 << 30:
                        raise CheckpointError(f"{ckpt_dir / rel}: unsupported byte item {info}")
                    stream.seek(info.offset)
                    _load_tensors(stream.read(info.length), ckpt_dir / rel)
        except OSError as error:
            raise CheckpointError(f"cannot read {ckpt_dir / rel}: {error}") from None


def check_distcp_metadata(ckpt_dir: Path, data: bytes) -> None:
    path = ckpt_dir / DISTCP_METADATA
    check_byte_items(ckpt_dir, parse_distcp_metadata(data, path), path)


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    """megatron's common.pt loader with weights_only=True stated, not left to torch's default
    (which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD can turn off)."""

    def load_common(self, checkpoint_dir):
        path = Path(checkpoint_dir) / COMMON
        return parse_common(path.read_bytes(), path)


def _load_tensors(data: bytes, path: Path):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # untrusted bytes: any failure is a refusal
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{path} was refused by torch.load(weights_only=True): "
                              f"{type(error).__name__}: {first}") from None


# Files whose content is parsed during verification: name -> checker(ckpt_dir, path, data).
CONTENT_CHECKS = {
    PROGRESS: lambda d, p, b: parse_progress(b, p),
    LEGACY_PROGRESS: lambda d, p, b: parse_legacy_progress(b, p),
    COMMON: lambda d, p, b: parse_common(b, p),
    BACKEND_CONFIG: lambda d, p, b: parse_backend_config(b, p),
    DISTCP_METADATA: lambda d, p, b: check_distcp_metadata(d, b),
}


def content_check(rel: str):
    """The checker for a checkpoint-relative file name, or None for opaque files."""
    if rel.startswith("rng_rank") and rel.endswith(".pt") and "/" not in rel:
        return lambda d, p, b: parse_rng(b, p)
    return CONTENT_CHECKS.get(rel)
