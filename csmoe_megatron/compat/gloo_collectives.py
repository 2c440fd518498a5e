"""Collectives that NCCL accepts but gloo rejects, rewritten with gloo-legal shapes.

* all_to_all_single: megatron passes split sizes as tensors (`maybe_move_tensor_to_cpu` only
  converts CUDA tensors); gloo wants Python lists.
* all_reduce with ReduceOp.AVG (megatron's aux-loss logging): gloo has no AVG; SUM then divide.
* all_gather / reduce_scatter with tensors of different sizes (expert-tensor parallelism with
  uneven token counts): gloo needs equal sizes, so pad each part to the largest, run the equal
  collective, and slice. Exact, because padding rows are never read back.
Only wraps torch.distributed when the compat layer is active (no CUDA, so no NCCL).
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist


def _as_list(sizes):
    if isinstance(sizes, torch.Tensor):
        return [int(s) for s in sizes.tolist()]
    return sizes


def _wrap_all_to_all_single(orig):
    @functools.wraps(orig)
    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None,
                          group=None, async_op=False):
        return orig(output, input, _as_list(output_split_sizes), _as_list(input_split_sizes),
                    group=group, async_op=async_op)

    return all_to_all_single


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t.contiguous()
    pad = t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))
    return torch.cat([t, pad], dim=0)


def _wrap_all_gather(orig):
    @functools.wraps(orig)
    def all_gather(tensor_list, tensor, group=None, async_op=False):
        sizes = [t.shape[0] if t.dim() else 1 for t in tensor_list]
        if tensor.dim() == 0 or len(set(sizes)) <= 1:
            return orig(tensor_list, tensor, group=group, async_op=async_op)
        rows = max(sizes)
        padded = [torch.empty((rows,) + tuple(t.shape[1:]), dtype=t.dtype) for t in tensor_list]
        work = orig(padded, _pad_rows(tensor, rows), group=group, async_op=False)
        for out, src, n in zip(tensor_list, padded, sizes):
            out.copy_(src[:n])
        return _DoneWork() if async_op else work

    return all_gather


def _wrap_reduce_scatter(orig):
    @functools.wraps(orig)
    def reduce_scatter(output, input_list, op=dist.ReduceOp.SUM, group=None, async_op=False):
        sizes = [t.shape[0] for t in input_list]
        if len(set(sizes)) <= 1:
            return orig(output, input_list, op=op, group=group, async_op=async_op)
        rows = max(sizes)
        out = torch.empty((rows,) + tuple(output.shape[1:]), dtype=output.dtype)
        work = orig(out, [_pad_rows(t, rows) for t in input_list], op=op, group=group,
                    async_op=False)
        output.copy_(out[: output.shape[0]])
        return _DoneWork() if async_op else work

    return reduce_scatter


def _wrap_all_reduce(orig):
    @functools.wraps(orig)
    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if op != dist.ReduceOp.AVG:
            return orig(tensor, op=op, group=group, async_op=async_op)
        work = orig(tensor, op=dist.ReduceOp.SUM, group=group, async_op=False)
        tensor.div_(dist.get_world_size(group))
        return _DoneWork() if async_op else work

    return all_reduce


class _DoneWork:
    """What an async collective returns once the (synchronous) fallback has already run."""

    def wait(self, timeout=None):
        return True

    def is_completed(self):
        return True


def install() -> None:
    if getattr(dist.all_to_all_single, "_csmoe_wrapped", False):
        return
    for name, wrap in (("all_to_all_single", _wrap_all_to_all_single),
                       ("all_gather", _wrap_all_gather),
                       ("all_reduce", _wrap_all_reduce),
                       ("reduce_scatter", _wrap_reduce_scatter)):
        wrapped = wrap(getattr(dist, name))
        wrapped._csmoe_wrapped = True
        setattr(dist, name, wrapped)
