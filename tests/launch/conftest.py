"""The local SLURM cluster fixture (tests/launch/slurm_cluster.py): started once per session in
a temporary directory when SLURM and munge are installed, skipped with the reason otherwise."""

from __future__ import annotations

import pytest

from tests.launch.slurm_cluster import missing_reason, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    state_dir = tmp_path_factory.mktemp("slurm")
    cluster = start_cluster(state_dir)
    try:
        yield cluster
    finally:
        stop_cluster(state_dir)
