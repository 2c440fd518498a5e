"""Process groups: torch.distributed + megatron-core's parallel_state, from the config."""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from .. import compat
from ..config.schema import ExperimentConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_world_size() -> int:
    """Ranks in this launch, known before any process group exists (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(cfg: ExperimentConfig, timeout_s: float | None = None) -> None:
    """Create the default group and megatron's model-parallel groups; seed every RNG stream.

    A single process started without torchrun gets a one-rank group on a free local port.
    """
    cpu = compat.install()
    backend = cfg.parallel.backend
    if backend == "auto":
        backend = "gloo" if cpu else "nccl"
    if backend == "nccl" and cpu:
        raise RuntimeError("parallel.backend=nccl needs CUDA, and none is available: "
                           "use parallel.backend=auto or gloo on CPU")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not cpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # The same timeout for megatron's groups (DP, EP, ...), which otherwise wait 30 minutes.
    timeout_s = timeout_s or cfg.parallel.collective_timeout_s
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    p = cfg.parallel
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline,
        context_parallel_size=p.context,
        expert_model_parallel_size=p.expert,
        expert_tensor_parallel_size=p.expert_tensor or p.tensor,
        distributed_timeout_minutes=timeout_s / 60,
    )
    seed_rngs(cfg.train.seed)


def seed_rngs(seed: int) -> None:
    """Every RNG stream of this rank: torch's and megatron's tracker (per TP/EP rank offsets)."""
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def destroy_distributed() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_logging_rank() -> bool:
    """Rank 0 writes the console, metrics.jsonl and TensorBoard. Every number it logs is
    reduced to all ranks first (the loss is shared from the last pipeline stage)."""
    return dist.get_rank() == 0 if dist.is_initialized() else True
