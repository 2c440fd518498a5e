"""A checkpoint's manifest (manifest.json, written last) and its verification at resume.

The manifest lists every file of the checkpoint with its size and CRC-32. CRC-32 (zlib, in the
standard library) because the manifest guards against damage (torn writes, truncation, a copy
cut short, bit rot), not against tampering: whoever can rewrite a file can rewrite the manifest,
so a cryptographic hash would add cost (sha256 runs at a tenth of CRC-32's ~3 GB/s a core here)
and no protection. Tampering is met by reading every file as data (checkpoint_files).

Cost on a large checkpoint: the files are split among the ranks (a rank's own .distcp shards and
RNG file go to it, everything else to rank 0), so each file is read once, in parallel, both when
the manifest is written (just after the save, mostly from the page cache) and when it is verified;
the ranks then agree on the verdict with one all-reduce. A 100 GB checkpoint on 64 ranks reads
about 1.6 GB per rank. Sizes are checked before any hashing, so truncation costs one stat.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint_files import LEGACY_PROGRESS, PROGRESS, CheckpointError, content_check

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "csmoe-checkpoint-manifest/1"
_PART = "manifest.part{:05d}.json"
_OURS_RE = re.compile(r"^manifest\.(part\d{5}\.)?json(\.tmp)?$")  # never listed in a manifest
_RANK_FILE_RE = re.compile(r"^(?:__(\d+)_\d+\.distcp|rng_rank(\d+)\.pt)$")
_CHUNK = 16 << 20
_OK = 1 << 62  # the all-reduced code when no rank found a problem


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def owner(rel: str, world: int) -> int:
    """The rank that hashes and checks a file: the writer of a per-rank file, else rank 0."""
    match = _RANK_FILE_RE.match(rel)
    return int(match.group(1) or match.group(2)) % world if match else 0


def _files(ckpt_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*")
                  if p.is_file() and not _OURS_RE.match(p.name))


def _read_checked(ckpt_dir: Path, rel: str, parse: bool = True,
                  expect: dict | None = None) -> tuple[int, int]:
    """(size, crc32) of a file, parsing it as data on the way (when `parse` and it is one we
    understand, and its checksum matches `expect` when given: damage is reported as damage)."""
    path = ckpt_dir / rel
    check = content_check(rel) if parse else None
    if check is not None:  # small files: read once, hash and parse the same bytes
        data = path.read_bytes()
        size, crc = len(data), zlib.crc32(data)
        if expect is None or (size, f"{crc:08x}") == (expect["size"], expect["crc32"]):
            check(ckpt_dir, path, data)
        return size, crc
    crc, size = 0, 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return size, crc


def write_part(ckpt_dir: Path) -> None:
    """Every rank: hash its share of the files and write it as a manifest part (no parsing:
    they were just written by us, and a refusal on one rank would leave the others waiting)."""
    rank, world = _rank_world()
    entries = {}
    for rel in _files(ckpt_dir):
        if owner(rel, world) == rank:
            size, crc = _read_checked(ckpt_dir, rel, parse=False)  # ours, just written
            entries[rel] = {"size": size, "crc32": f"{crc:08x}"}
    _atomic_write(ckpt_dir / _PART.format(rank), json.dumps(entries).encode())


def merge_parts(ckpt_dir: Path) -> None:
    """Rank 0, after every part is written: one manifest.json, written last, parts removed."""
    files: dict = {}
    # Opened by name, not found by listing: a shared file system may list a directory stale.
    parts = [ckpt_dir / _PART.format(rank) for rank in range(_rank_world()[1])]
    for part in parts:
        files.update(json.loads(part.read_text()))
    missing = sorted(set(_files(ckpt_dir)) - set(files))
    if missing:
        raise CheckpointError(f"{ckpt_dir}: no rank hashed {missing}; the save is incomplete")
    doc = {"format": MANIFEST_FORMAT, "checksum": "crc32", "files": files}
    _atomic_write(ckpt_dir / MANIFEST, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    for part in parts:
        part.unlink()


def write_manifest(ckpt_dir: Path) -> None:
    """Single process: the manifest of a directory (tests, tools)."""
    write_part(ckpt_dir)
    merge_parts(ckpt_dir)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def read_manifest(ckpt_dir: Path) -> dict:
    """{relative path: {"size", "crc32"}}; CheckpointError naming the manifest when unusable."""
    path = ckpt_dir / MANIFEST
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing (the save did not finish)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} is unreadable: {error}") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint manifest ({MANIFEST_FORMAT})")
    files = doc.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(rel, str) and ".." not in Path(rel).parts and not Path(rel).is_absolute()
            and isinstance(e, dict) and type(e.get("size")) is int
            and isinstance(e.get("crc32"), str) for rel, e in files.items()):
        raise CheckpointError(f"{path} has malformed file entries")
    return files


def file_problem(ckpt_dir: Path, rel: str, entry: dict | None) -> str | None:
    """Why one file fails verification (None when it passes). entry None: legacy checkpoint
    without a manifest, where only the content checks apply."""
    path = ckpt_dir / rel
    try:
        if entry is None and content_check(rel) is None:  # no checksum to compare: skip reading
            path.stat()
            return None
        if entry is not None and path.stat().st_size != entry["size"]:
            return (f"{rel} is {path.stat().st_size} bytes, the manifest says {entry['size']} "
                    f"(truncated or replaced)")
        size, crc = _read_checked(ckpt_dir, rel, expect=entry)
    except FileNotFoundError:
        return f"{rel} is missing"
    except OSError as error:
        return f"{rel} cannot be read: {error}"
    except CheckpointError as error:
        return str(error)
    except Exception as error:  # crafted bytes past a parser's own checks; never hang the others
        return f"{rel} was refused: {type(error).__name__}: {error}"
    if entry is not None and (size != entry["size"] or f"{crc:08x}" != entry["crc32"]):
        return f"{rel} does not match its checksum in the manifest (damaged)"
    return None


# Files without which a checkpoint cannot load (a manifest that lacks one is not ours).
_REQUIRED = ("metadata.json", ".metadata", "common.pt")


def is_legacy(ckpt_dir: Path) -> bool:
    """Written before checkpoints carried a manifest (progress.pt, no manifest.json)."""
    return not (ckpt_dir / MANIFEST).exists() and (ckpt_dir / LEGACY_PROGRESS).is_file()


def verify(ckpt_dir: Path) -> str | None:
    """Collective when torch.distributed is initialised: every rank checks its share and all
    agree. Returns why the checkpoint fails (the full reason on rank 0), None when it passes.
    A legacy checkpoint has no checksums: only the content checks apply to it."""
    rank, world = _rank_world()
    problem, files, code = None, [], _OK
    try:
        if is_legacy(ckpt_dir):
            entries, required = {rel: None for rel in _files(ckpt_dir)}, LEGACY_PROGRESS
        else:
            entries, required = read_manifest(ckpt_dir), PROGRESS
        files = sorted(entries)
        lacking = [r for r in _REQUIRED + (required,) if r not in entries]
        if lacking:
            raise CheckpointError(f"{ckpt_dir / MANIFEST} lists no {', '.join(lacking)}")
    except CheckpointError as error:  # the same on every rank: they read the same file
        problem, code = str(error), 0
    for i, rel in enumerate(files if code else []):
        if owner(rel, world) == rank:
            problem = file_problem(ckpt_dir, rel, entries[rel])
            if problem is not None:
                code = 1 + i
                break
    own = code
    code = _agree(code)
    if code == _OK:
        return None
    if code != own:  # another rank found it first: rank 0 looks at that one file itself
        problem = (file_problem(ckpt_dir, files[code - 1], entries[files[code - 1]])
                   if rank == 0 and 0 < code <= len(files) else None)
        problem = problem or "failed verification on another rank (see its log)"
    return problem


def _agree(code: int) -> int:
    """The smallest code over all ranks (one all-reduce on this rank's device)."""
    if _rank_world()[1] == 1:
        return code
    from ..device import current_device

    tensor = torch.tensor([code], dtype=torch.int64, device=current_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())
