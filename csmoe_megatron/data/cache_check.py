"""The dataset index cache (<run.dir>/data_cache or data.cache_dir) holds .npy files that
megatron-core reads with numpy.load(allow_pickle=True): a file there that is a pickle rather than
an array would run as code. Check every header first: plain arrays only."""

from __future__ import annotations

from pathlib import Path

import numpy
from numpy.lib import format as npy_format


def check_index_cache(cache_dir: Path) -> None:
    """ValueError naming the first cache file that is not a plain (non-object) .npy array."""
    if not cache_dir.is_dir():
        return
    for path in sorted(cache_dir.glob("*.npy")):
        try:
            with open(path, "rb") as stream:
                version = npy_format.read_magic(stream)
                read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                               else npy_format.read_array_header_2_0)
                _, _, dtype = read_header(stream)
            problem = "holds Python objects" if numpy.dtype(dtype).hasobject else None
        except Exception as error:  # untrusted bytes: any failure is a refusal
            problem = f"is not a numpy array file ({type(error).__name__}: {error})"
        if problem:
            raise ValueError(f"{path} {problem}; megatron would unpickle it (run code). Fix: "
                             f"delete {cache_dir} (the dataset index cache is rebuilt)")
