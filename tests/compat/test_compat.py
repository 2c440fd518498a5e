"""The CPU compatibility layer: each workaround does what its one-line reason says."""

import pytest
import torch

from csmoe_megatron import compat
from tests.dist_utils import run_distributed

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the compat layer is CPU-only")


def test_install_is_idempotent_and_active_without_cuda():
    assert compat.install() is True
    assert compat.install() is True
    assert compat.is_installed()


def test_cuda_device_requests_land_on_cpu():
    compat.install()
    for device in ("cuda", torch.device("cuda"), "cuda:0", torch.cuda.current_device()):
        t = torch.zeros(3, device=device)
        assert t.device.type == "cpu"
    x = torch.ones(2)
    assert x.cuda() is x
    assert x.to("cuda").device.type == "cpu"
    assert x.to("cuda", dtype=torch.float64).dtype == torch.float64
    assert x.type() == "torch.cuda.FloatTensor"  # what megatron's dtype checks compare against
    assert x.type(torch.float64).dtype == torch.float64


def test_streams_events_and_rng_tracker():
    compat.install()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        stream.wait_stream(torch.cuda.current_stream())
    torch.cuda.synchronize()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, initialize_rng_tracker

    initialize_rng_tracker(force_reset=True)
    tracker = get_cuda_rng_tracker()
    tracker.add("a", 123)
    before = torch.get_rng_state()
    with tracker.fork("a"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # the default stream is untouched
    with tracker.fork("a"):
        second = torch.rand(3)
    assert not torch.equal(first, second)  # the forked stream advances


def test_megatron_style_device_arguments_work_inside_backward():
    # Backward functions run without the torch-function mode; megatron's all-to-all backward
    # allocates with device=torch.cuda.current_device(), which must name the CPU.
    compat.install()

    class Alloc(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * torch.ones(g.shape, device=torch.cuda.current_device())

    x = torch.ones(3, requires_grad=True)
    Alloc.apply(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3))


def _uneven_collectives(rank, world_size):
    import torch.distributed as dist

    rows = [1, 3]
    mine = torch.full((rows[rank], 2), float(rank + 1))
    out = [torch.empty(r, 2) for r in rows]
    dist.all_gather(out, mine)
    for r, t in enumerate(out):
        assert torch.equal(t, torch.full((rows[r], 2), float(r + 1)))
    parts = [torch.full((r, 2), float(rank + 1)) for r in rows]
    got = torch.empty(rows[rank], 2)
    dist.reduce_scatter(got, parts)
    assert torch.equal(got, torch.full((rows[rank], 2), 3.0))
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    assert t.item() == 0.5
    send = torch.arange(4.0) + 10 * rank
    recv = torch.empty(4)
    dist.all_to_all_single(recv, send, output_split_sizes=torch.tensor([2, 2]),
                           input_split_sizes=torch.tensor([2, 2]))
    assert recv.tolist() == ([0.0, 1.0, 10.0, 11.0] if rank == 0 else [2.0, 3.0, 12.0, 13.0])


def test_gloo_collectives_megatron_needs():
    run_distributed(_uneven_collectives, world_size=2)


def test_nothing_is_patched_when_cuda_is_present():
    # In a fresh interpreter that believes a GPU exists, install() must leave torch alone.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "stream, sync = torch.cuda.Stream, torch.cuda.synchronize\n"
        "import torch.distributed as dist\n"
        "a2a = dist.all_to_all_single\n"
        "from csmoe_megatron import compat\n"
        "assert compat.install() is False and not compat.is_installed()\n"
        "assert torch.cuda.Stream is stream and torch.cuda.synchronize is sync\n"
        "assert dist.all_to_all_single is a2a\n"
        "assert torch.overrides._get_current_function_mode() is None\n"
        "print('untouched')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "untouched" in proc.stdout, proc.stderr[-2000:]
