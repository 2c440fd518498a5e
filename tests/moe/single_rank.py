"""megatron's parallel state for one process, in the test process itself (no spawn): for
single-rank layer tests, which then cost no interpreter start-up.

    @pytest.fixture(scope="module", autouse=True)
    def _one_rank():
        with single_rank():
            yield
"""

from __future__ import annotations

import contextlib

from tests.dist_utils import init_parallel, teardown


@contextlib.contextmanager
def single_rank(seed: int = 1234):
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        init_parallel(0, 1, seed=seed)
        yield
    finally:
        teardown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
