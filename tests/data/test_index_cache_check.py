"""A dataset index cache file that is a pickle, not an array, is refused before megatron-core's
numpy.load(allow_pickle=True) can run it (issue 14)."""

import pickle
from pathlib import Path

import numpy
import pytest

from csmoe_megatron.data.cache_check import check_index_cache


class _CreatesFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_plain_arrays_pass_and_a_pickle_or_object_array_is_refused(tmp_path):
    cache, created = tmp_path / "data_cache", tmp_path / "payload_ran"
    check_index_cache(cache)  # not built yet: nothing to check
    cache.mkdir()
    numpy.save(cache / "x-train-document_index.npy", numpy.arange(10, dtype=numpy.int32))
    check_index_cache(cache)
    (cache / "x-train-shuffle_index.npy").write_bytes(pickle.dumps(_CreatesFile(created)))
    with pytest.raises(ValueError, match="x-train-shuffle_index.npy is not a numpy array file"
                                         ".*delete"):
        check_index_cache(cache)
    numpy.save(cache / "x-train-shuffle_index.npy", numpy.array([_CreatesFile(created)]),
               allow_pickle=True)
    with pytest.raises(ValueError, match="shuffle_index.npy holds Python objects"):
        check_index_cache(cache)
    assert not created.exists()
