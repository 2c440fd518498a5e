"""Map CUDA device requests to the CPU, globally, with a TorchFunctionMode.

megatron-core's optimizer, schedules and clip-grad code contain many `device="cuda"` literals,
`torch.cuda.current_device()` (an int, i.e. cuda:N) device arguments, `.cuda()` calls and
`param.type() == "torch.cuda.FloatTensor"` checks. Rewriting each call site would mean forking;
one mode that intercepts torch calls is general and is a no-op where CUDA exists (never installed).

The autograd engine does not carry Python torch-function modes into backward functions; the
CUDA assumptions megatron makes there are `device=torch.cuda.current_device()` arguments, which
cuda_stubs answers with the CPU device.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")


def _is_cuda_device(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int):  # torch.cuda.current_device() style: an index means cuda:N
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _cuda_type_name(name: str) -> str:
    # "torch.FloatTensor" -> "torch.cuda.FloatTensor": what megatron's dtype checks expect.
    if name.startswith("torch.") and not name.startswith("torch.cuda."):
        return "torch.cuda." + name[len("torch."):]
    return name


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch call made while it is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = _CPU
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to:
            args, kwargs = _strip_cuda_from_to(args, kwargs)
        elif func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _cuda_type_name(func(*args))
        return func(*args, **kwargs)


def _strip_cuda_from_to(args, kwargs):
    # tensor.to("cuda"), tensor.to(0), tensor.to(device="cuda", dtype=...), tensor.to("cuda", dtype)
    if len(args) >= 2 and _is_cuda_device(args[1]) and not isinstance(args[1], bool):
        args = (args[0], _CPU) + tuple(args[2:])
    return args, kwargs


_MODE: CudaToCpuMode | None = None


def install() -> None:
    """Enter the mode for the rest of the process (torch keeps a per-thread mode stack)."""
    global _MODE
    if _MODE is None:
        _MODE = CudaToCpuMode()
        _MODE.__enter__()
