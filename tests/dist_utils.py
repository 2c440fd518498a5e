"""Run a test function on N CPU processes over gloo, with megatron's parallel groups.

    run_distributed(worker, world_size=2, tensor=1, expert=2, ...)  # in the test
    def worker(rank, world_size, **kwargs): ...                      # module-level, in the test

Workers are spawned (fresh interpreters), so the worker is located by its file path and name
rather than pickled by module name (pytest's test modules are not importable in a child).
An exception in any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import traceback

import torch
import torch.multiprocessing as mp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(f"_dist_worker_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def _entry(rank, world_size, port, path, name, parallel, kwargs, errors):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    torch.set_num_threads(1)
    try:
        init_parallel(rank, world_size, **parallel)
        _load(path, name)(rank, world_size, **kwargs)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        teardown()


def init_parallel(rank, world_size, tensor=1, pipeline=1, expert=1, expert_tensor=None,
                  virtual_pipeline=None, seed=1234):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from csmoe_megatron import compat

    compat.install()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor, pipeline_model_parallel_size=pipeline,
        virtual_pipeline_model_parallel_size=virtual_pipeline,
        expert_model_parallel_size=expert,
        expert_tensor_parallel_size=expert_tensor or tensor)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def teardown():
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def run_distributed(worker, world_size: int, parallel: dict | None = None, **kwargs) -> None:
    """Run `worker(rank, world_size, **kwargs)` on `world_size` gloo processes."""
    path = os.path.abspath(sys.modules[worker.__module__].__file__)
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    args = (world_size, _free_port(), path, worker.__name__, parallel or {}, kwargs, errors)
    try:
        mp.start_processes(_entry, args=args, nprocs=world_size, join=True,
                           start_method="spawn")
    except Exception as exc:
        reports = []
        while not errors.empty():
            rank, text = errors.get()
            reports.append(f"--- rank {rank} ---\n{text}")
        raise AssertionError("distributed worker failed:\n" + "\n".join(reports)) from exc
