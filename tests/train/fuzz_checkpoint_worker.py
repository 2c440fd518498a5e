"""Fuzz worker (run in a subprocess by test_checkpoint_safety, so that a crash or hang shows as
one): mutates each checkpoint file we read and prints one JSON line per case.

Each case is checked twice: the file's own parser on the mutated bytes (as if an attacker had
rewritten the manifest too) must accept or raise CheckpointError naming the file; and
verification of the mutated file against the manifest must refuse it, naming the file.
"""

import json
import sys
from pathlib import Path

from csmoe_megatron.train import checkpoint_manifest as manifest
from csmoe_megatron.train.checkpoint_files import CheckpointError, content_check

from tests.fuzz_mutations import mutations

FILES = [".metadata", "common.pt", "progress.json", "rng_rank00000.pt", "metadata.json",
         "manifest.json"]


def _parse(ckpt: Path, name: str, data: bytes) -> str:
    path = ckpt / name
    try:
        if name == "manifest.json":
            path.write_bytes(data)
            manifest.read_manifest(ckpt)
        else:
            content_check(name)(ckpt, path, data)
    except CheckpointError as error:
        return "refused: " + str(error)
    return "accepted"


def _same_json(a: bytes, b: bytes) -> bool:
    """Whether two JSON texts mean the same (a flipped space can turn into another space)."""
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def main(ckpt: Path, seed: int, count: int) -> None:
    entries = manifest.read_manifest(ckpt)
    for n, name in enumerate(FILES):
        original = (ckpt / name).read_bytes()
        for what, data in mutations(original, seed + n, count):
            parsed = _parse(ckpt, name, data)
            (ckpt / name).write_bytes(data)
            try:  # verify() checks every file; only the mutated one differs (the manifest: all)
                verdict = manifest.verify(ckpt) if name == "manifest.json" else \
                    manifest.file_problem(ckpt, name, entries[name])
            finally:
                (ckpt / name).write_bytes(original)
            print(json.dumps({"file": name, "case": what, "parse": parsed, "verify": verdict,
                              "same_meaning": _same_json(original, data)}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
