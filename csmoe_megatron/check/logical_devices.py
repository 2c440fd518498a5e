"""The logical device of every tensor in an emulated GPU rank (see emulated_cuda.py).

A side table maps each storage to the device it would live on; views share their base's
storage and so its tag, and `param.data = other` re-points a parameter at other's storage and
tag, as on a GPU. `move` is a cross-device copy; `gpu_generator` makes random work for a GPU
tensor draw from that GPU's generator; `require_device` is the rule NCCL and the model check
apply.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from . import host_syncs
from .where import DeviceMismatch, running_module, site

_CPU = torch.device("cpu")


class LogicalDevices:
    """storage -> logical device. Views share their base's storage, so they share its tag;
    `param.data = other` re-points a parameter at other's storage and tag, as on a GPU."""

    def __init__(self, local_index: int):
        self.local_index = local_index
        self._by_storage = WeakIdKeyDictionary()
        self._empty = WeakIdKeyDictionary()  # 0-byte storages all have data_ptr 0: key by tensor

    def cuda(self, index=None) -> torch.device:
        return torch.device("cuda", self.local_index if index is None else index)

    def of(self, t: torch.Tensor) -> torch.device:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t.device
        table, key = (self._empty, t) if storage.nbytes() == 0 else (self._by_storage, storage)
        return table.get(key, _CPU)

    def tag(self, t: torch.Tensor, device: torch.device) -> None:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        if storage.nbytes() == 0:
            self._empty[t] = device
        else:
            self._by_storage[storage] = device

    def resolve(self, device) -> torch.device | None:
        """A device argument as a GPU program means it: an int or "cuda" is this rank's GPU."""
        if device is None:
            return None
        if isinstance(device, int) and not isinstance(device, bool):
            return self.cuda(device)
        device = torch.device(device)
        if device.type == "cuda":
            return self.cuda(device.index)
        return device


DEVICES: LogicalDevices | None = None  # set by emulated_cuda.install()


def is_cuda_arg(device) -> bool:
    if device is None or isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"


def tag_outputs(out, device: torch.device):
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            DEVICES.tag(t, device)
    return out


class _Move(torch.autograd.Function):
    """A cross-device copy: data copied on the CPU, the copy tagged with the target device;
    its gradient goes back to the source device, as CUDA's copy backward does."""

    @staticmethod
    def forward(ctx, t, target, dtype):
        ctx.source, ctx.dtype = DEVICES.of(t), t.dtype
        out = t.to(dtype=dtype or t.dtype, copy=True)
        DEVICES.tag(out, target)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = grad.to(dtype=ctx.dtype, copy=True)
        DEVICES.tag(out, ctx.source)
        return out, None, None


def move(t: torch.Tensor, target, dtype=None, non_blocking=False, copy=False):
    target = DEVICES.resolve(target)
    source = DEVICES.of(t)
    if target is None or target == source:
        return t.to(dtype=dtype or t.dtype, copy=copy)
    if source.type == "cuda" and target.type == "cpu" and not non_blocking:
        host_syncs.record("device-to-host copy")
    return _Move.apply(t, target, dtype)


@contextlib.contextmanager
def gpu_generator(device: torch.device):
    """Random work for a GPU tensor draws from that GPU's generator, as on a GPU (megatron
    forks the CUDA RNG for dropout and initialisation and checks the CPU's is untouched)."""
    cpu, gpu = torch.default_generator, torch.cuda.default_generators[device.index]
    saved = cpu.get_state()
    cpu.set_state(gpu.get_state())
    try:
        yield
    finally:
        gpu.set_state(cpu.get_state())
        cpu.set_state(saved)


def logical_device(t: torch.Tensor) -> torch.device:
    return DEVICES.of(t) if DEVICES is not None else t.device


def require_device(tensors, device_type: str, what: str, rule: str) -> None:
    """Raise DeviceMismatch when a tensor is not on `device_type` (collectives, parameters)."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and logical_device(t).type != device_type:
            raise DeviceMismatch(f"{what} is on {logical_device(t)} (shape {list(t.shape)}, "
                                 f"{str(t.dtype).replace('torch.', '')}): {rule}; in "
                                 f"{running_module()}; at {site()}")
