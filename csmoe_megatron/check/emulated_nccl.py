"""An NCCL-like process group for the CUDA check: NCCL's rules, gloo's transport.

Every collective and point-to-point op checks that its tensors are (logically) CUDA tensors,
as NCCL requires, then runs over gloo between the rank processes. What NCCL accepts and gloo
does not (ReduceOp.AVG, uneven all-gather / reduce-scatter parts) is done here the way NCCL
would answer. Groups created with backend="gloo" stay real gloo groups, as on a GPU cluster
(megatron's CPU-side groups), and keep accepting CPU tensors.

install() registers the backend and makes "nccl" (and the default backend) resolve to it.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future
from torch.utils._pytree import tree_flatten

from . import host_syncs
from .logical_devices import require_device

NAME = "cuda_emulated"


def _done(result=None):
    fut = torch.futures.Future()
    fut.set_result(result)
    return _create_work_from_future(fut)


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


class EmulatedNCCLGroup(dist.ProcessGroup):
    def __init__(self, store, rank: int, size: int, timeout):
        super().__init__(rank, size)
        self._gloo = dist.ProcessGroupGloo(store, rank, size, timeout)

    @property
    def _device_types(self):
        return [torch.device("cuda")]  # object collectives stage their bytes on the GPU

    def getBackendName(self):
        return NAME

    def _check(self, op: str, *tensors):
        require_device(tree_flatten(tensors)[0], "cuda", f"a tensor given to NCCL {op}",
                       "NCCL takes only CUDA tensors")

    # -- reductions ------------------------------------------------------------------------
    def allreduce(self, tensors, opts=None):
        self._check("all_reduce", tensors)
        opts = opts or dist.AllreduceOptions()
        if opts.reduceOp == dist.ReduceOp.AVG:
            sum_opts = dist.AllreduceOptions()
            sum_opts.reduceOp = dist.ReduceOp.SUM
            self._gloo.allreduce(tensors, sum_opts).wait()
            for t in tensors:
                t.div_(self.size())
            return _done(tensors)
        return self._gloo.allreduce(tensors, opts)

    def allreduce_coalesced(self, tensors, opts=None):
        single = dist.AllreduceOptions()
        if opts is not None:
            single.reduceOp = opts.reduceOp
        for t in tensors:
            self.allreduce([t], single).wait()
        return _done(tensors)

    def reduce(self, tensors, opts):
        self._check("reduce", tensors)
        return self._gloo.reduce(tensors, opts)

    def reduce_scatter_single(self, output, input, opts=None):
        self._check("reduce_scatter_tensor", output, input)
        parts = list(input.chunk(self.size()))
        return self.reduce_scatter([output], [parts], opts)

    def reduce_scatter(self, outputs, input_lists, opts=None):
        self._check("reduce_scatter", outputs, *input_lists)
        opts = opts or dist.ReduceScatterOptions()
        avg = opts.reduceOp == dist.ReduceOp.AVG
        for output, inputs in zip(outputs, input_lists):
            rows = max(t.shape[0] for t in inputs)
            gathered = [_pad(t, rows).contiguous() for t in inputs]
            total = torch.stack(gathered)
            sum_opts = dist.AllreduceOptions()
            sum_opts.reduceOp = dist.ReduceOp.SUM if avg else opts.reduceOp
            self._gloo.allreduce([total], sum_opts).wait()
            mine = total[self.rank()][: output.shape[0]]
            output.copy_(mine / self.size() if avg else mine)
        return _done(outputs)

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        for output, input in zip(outputs, inputs):
            self.reduce_scatter_single(output, input, opts).wait()
        return _done(outputs)

    # -- gathers ---------------------------------------------------------------------------
    def all_gather_single(self, output, input, opts=None):
        self._check("all_gather_into_tensor", output, input)
        return self._gloo._allgather_base(output, input.contiguous())

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        for output, input in zip(outputs, inputs):
            self.all_gather_single(output, input).wait()
        return _done(outputs)

    def allgather(self, output_lists, inputs, opts=None):
        self._check("all_gather", inputs, *output_lists)
        for outputs, input in zip(output_lists, inputs):
            rows = max(t.shape[0] if t.dim() else 1 for t in outputs)
            if input.dim() == 0 or len({t.shape[0] for t in outputs}) == 1:
                self._gloo.allgather([outputs], [input.contiguous()]).wait()
                continue
            padded = [torch.empty((rows,) + tuple(t.shape[1:]), dtype=t.dtype) for t in outputs]
            self._gloo.allgather([padded], [_pad(input, rows).contiguous()]).wait()
            for out, src in zip(outputs, padded):
                out.copy_(src[: out.shape[0]])
        return _done(output_lists)

    def broadcast(self, tensors, opts=None):
        self._check("broadcast", tensors)
        return self._gloo.broadcast(tensors, opts or dist.BroadcastOptions())

    def all_to_all_single(self, output, input, output_splits, input_splits, opts=None):
        self._check("all_to_all_single", output, input)
        return self._gloo.alltoall_base(output, input.contiguous(), list(output_splits),
                                        list(input_splits), opts or dist.AllToAllOptions())

    def alltoall(self, outputs, inputs, opts=None):
        self._check("all_to_all", outputs, inputs)
        return self._gloo.alltoall(outputs, inputs, opts or dist.AllToAllOptions())

    def gather(self, output_lists, inputs, opts):
        self._check("gather", inputs, *output_lists)
        return self._gloo.gather(output_lists, inputs, opts)

    def scatter(self, outputs, input_lists, opts):
        self._check("scatter", outputs, *input_lists)
        return self._gloo.scatter(outputs, input_lists, opts)

    # -- point to point and barrier ----------------------------------------------------------
    def send(self, tensors, dst, tag=0):
        self._check("send", tensors)
        return self._gloo.send(tensors, dst, tag)

    def recv(self, tensors, src, tag=0):
        self._check("recv", tensors)
        return self._gloo.recv(tensors, src, tag)

    def barrier(self, opts=None):
        return self._gloo.barrier(opts or dist.BarrierOptions())

    # Names of the same operations in torch releases before 2.13.
    _allgather_base = all_gather_single
    allgather_into_tensor_coalesced = all_gather_single_coalesced
    _reduce_scatter_base = reduce_scatter_single
    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced
    alltoall_base = all_to_all_single

    def _start_coalescing(self, device):
        pass

    def _end_coalescing(self, device):
        return _done()


def _create(store, rank, size, timeout):
    return EmulatedNCCLGroup(store, rank, size, timeout)


def _translated(fn, backend_position: int):
    """Calls with backend "nccl" (or "cuda:nccl") get the emulated backend."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = list(args)
        if "backend" in kwargs:
            kwargs["backend"] = _translate(kwargs["backend"])
        elif len(args) > backend_position:
            args[backend_position] = _translate(args[backend_position])
        return fn(*args, **kwargs)

    return wrapper


def _translate(backend):
    if isinstance(backend, str) and backend.lower() in ("nccl", "cuda:nccl", "cpu:gloo,cuda:nccl"):
        return NAME
    return backend


def _counted(fn):
    """Object collectives pickle on the host and read sizes back: count them as host syncs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        host_syncs.record(f"object collective {fn.__name__}")
        return fn(*args, **kwargs)

    return wrapper


def install() -> None:
    if hasattr(dist.Backend, NAME.upper()):
        return
    for name in ("all_gather_object", "broadcast_object_list", "gather_object",
                 "scatter_object_list"):
        setattr(dist, name, _counted(getattr(dist, name)))
    dist.Backend.register_backend(NAME, _create, devices=["cpu", "cuda"])
    dist.is_nccl_available = lambda: True
    dist.init_process_group = _translated(dist.init_process_group, 0)
    dist.new_group = _translated(dist.new_group, 2)
    dist.distributed_c10d.new_group = dist.new_group
