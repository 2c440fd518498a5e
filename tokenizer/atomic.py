"""Write-to-temporary-then-rename helpers, so readers never see half-written outputs."""

import os
import shutil
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A name next to `path` (same filesystem, so rename is atomic) unique to this process."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def write_bytes_atomically(path: Path, data: bytes) -> None:
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        remove_quietly(tmp)


def remove_quietly(path: Path) -> None:
    """Delete a leftover temporary file or directory if it is still there."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
