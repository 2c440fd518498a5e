"""CUDA semantics on a CPU-only machine: every tensor carries the device it would live on.

Data stays in CPU memory (real numerics, real host reads); a side table records each storage's
*logical* device, and two modes keep it honest:

* DeviceFunctionMode (Python API level, forward code): `device="cuda"` / `device=N` factory
  arguments, `.to(...)`, `.cuda()`, `.cpu()` and `.type(...)` become CPU work tagged with the
  device they ask for; `.device`, `.is_cuda`, `.get_device()`, `.type()` answer with the tag.
* DeviceDispatchMode (aten level, forward AND backward): every op checks that its tensor
  arguments share one logical device, as CUDA kernels require (a 0-dim CPU tensor is allowed
  as a scalar; CPU index tensors are allowed in advanced indexing; copies are transfers), and
  tags its outputs. A mismatch raises DeviceMismatch naming the op, the devices, the module
  being run and the code that called it.

Host reads of device data (`.item()`, `.tolist()`, blocking device-to-host copies, stream and
device synchronisation, nonzero and other data-dependent shapes) are counted per training
step and call site in `host_syncs` (see host_syncs.py).

The autograd engine does not carry torch-function modes into backward; custom autograd
Functions get the function mode back through BackwardCFunction.apply (install()), so
`device=torch.cuda.current_device()` inside megatron's backward functions works as on a GPU.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import host_syncs
from . import logical_devices as ld
from .logical_devices import (DeviceMismatch, LogicalDevices, gpu_generator, is_cuda_arg, move,
                              tag_outputs)
from .where import describe, site

_CPU = torch.device("cpu")
aten = torch.ops.aten


def _parse_to(args, kwargs):
    """Tensor.to's overloads -> (device, dtype, non_blocking, copy)."""
    args, kwargs = list(args), dict(kwargs)
    copy = kwargs.pop("copy", False)
    kwargs.pop("memory_format", None)
    non_blocking = kwargs.pop("non_blocking", False)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if args and isinstance(args[0], torch.Tensor):  # to(other, ...)
        other = args.pop(0)
        device, dtype = ld.DEVICES.of(other), other.dtype
    elif args and not isinstance(args[0], torch.dtype):  # to(device, dtype?, ...)
        device = args.pop(0)
    if args and isinstance(args[0], torch.dtype):
        dtype = args.pop(0)
    if args:
        non_blocking = args.pop(0)
    if args:
        copy = args.pop(0)
    return device, dtype, non_blocking, copy


_TYPE_NAMES = {torch.float32: "FloatTensor", torch.float16: "HalfTensor",
               torch.bfloat16: "BFloat16Tensor", torch.float64: "DoubleTensor",
               torch.int64: "LongTensor", torch.int32: "IntTensor", torch.uint8: "ByteTensor",
               torch.int8: "CharTensor", torch.bool: "BoolTensor", torch.int16: "ShortTensor"}


def _type_name(t: torch.Tensor) -> str:
    cuda = ld.DEVICES.of(t).type == "cuda"
    return ("torch.cuda." if cuda else "torch.") + _TYPE_NAMES.get(t.dtype, "Tensor")


_DEVICE_GETTERS = {torch.Tensor.device.__get__: lambda d: d,
                   torch.Tensor.is_cuda.__get__: lambda d: d.type == "cuda",
                   torch.Tensor.is_cpu.__get__: lambda d: d.type == "cpu"}


# Python factories whose result is a CPU tensor unless `device=` says otherwise.
_CPU_FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand,
                  torch.randn, torch.randint, torch.randperm, torch.tensor, torch.as_tensor,
                  torch.linspace, torch.logspace, torch.eye, torch.empty_strided,
                  torch.scalar_tensor}


def _fresh(out, args):
    """as_tensor(t, device=...) returns t itself when nothing changes on the CPU; a move to
    another logical device must not re-tag the caller's tensor: copy it."""
    inputs = {id(a.untyped_storage()) for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)}
    if isinstance(out, torch.Tensor) and id(out.untyped_storage()) in inputs:
        return out.clone()
    return out


class DeviceFunctionMode(TorchFunctionMode):
    """Python-level half: device arguments, transfers and device queries."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _DEVICE_GETTERS:  # property getters arrive as fresh method-wrappers
            device = ld.DEVICES.of(args[0])
            return _DEVICE_GETTERS[func](device)
        if func is torch.Tensor.get_device:
            device = ld.DEVICES.of(args[0])
            return device.index if device.type == "cuda" else -1
        if func is torch.Tensor.to:
            device, dtype, non_blocking, copy = _parse_to(args[1:], kwargs)
            return move(args[0], device, dtype, non_blocking, copy)
        if func is torch.Tensor.cuda:
            device = args[1] if len(args) > 1 else kwargs.get("device")
            return move(args[0], ld.DEVICES.cuda(None if device is None else
                                              ld.DEVICES.resolve(device).index),
                        non_blocking=kwargs.get("non_blocking", False))
        if func is torch.Tensor.cpu:
            return move(args[0], _CPU)
        if func is torch.Tensor.type:
            return self._type(args, kwargs)
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.tolist and ld.DEVICES.of(args[0]).type == "cuda":
            host_syncs.record(".tolist()")
        if func is torch.Tensor.numpy and ld.DEVICES.of(args[0]).type == "cuda":
            raise DeviceMismatch(f"numpy() of a tensor on {ld.DEVICES.of(args[0])} (CUDA tensors "
                                 f"must be copied to the host first) at {site()}")
        # Factories: a Python-level call says where its result lives (the CPU by default);
        # the dispatch level cannot tell a CPU request from a C++ `options()` (see below).
        kwargs.pop("pin_memory", None)
        if "device" in kwargs and kwargs["device"] is not None:
            target = ld.DEVICES.resolve(kwargs["device"])
            kwargs["device"] = _CPU
            scope = gpu_generator(target) if target.type == "cuda" else contextlib.nullcontext()
            with scope:
                out = func(*args, **kwargs)
            return tag_outputs(_fresh(out, args), target)
        if func in _CPU_FACTORIES and not _has_tensor(args, kwargs):
            return tag_outputs(func(*args, **kwargs), _CPU)
        return func(*args, **kwargs)

    @staticmethod
    def _type(args, kwargs):
        """t.type() names the CUDA type of a GPU tensor (megatron's optimizer checks it);
        t.type("torch.cuda.FloatTensor") moves and casts, t.type(torch.float32) casts."""
        t, target = args[0], (args[1] if len(args) > 1 else kwargs.get("dtype"))
        if target is None:
            return _type_name(t)
        if isinstance(target, torch.dtype):
            return t.to(target)
        name = target if isinstance(target, str) else f"{target.__module__}.{target.__name__}"
        dtype = next((d for d, n in _TYPE_NAMES.items() if name.endswith("." + n)), t.dtype)
        return move(t, ld.DEVICES.cuda() if ".cuda." in name else _CPU, dtype)


# Ops whose tensor arguments may legitimately sit on different devices.
_TRANSFERS = {aten.copy_.default, aten._to_copy.default, aten.copy.default,
              aten._copy_from.default, aten._copy_from_and_resize.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
             aten._index_put_impl_.default, aten._unsafe_index.Tensor}
# Ops whose output size depends on the data: on a GPU each waits for the device.
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default,
                   aten._unique2.default, aten.unique_consecutive.default, aten.equal.default,
                   aten.is_nonzero.default}


class DeviceDispatchMode(TorchDispatchMode):
    """aten-level half: device agreement of every op, output tags, implicit host syncs."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        target = kwargs.get("device")
        if is_cuda_arg(target):  # a factory or copy asked for the GPU from C++ or backward code
            kwargs["device"] = _CPU
            kwargs.pop("pin_memory", None)
        elif target is not None and not _has_tensor(args, kwargs) and \
                torch._C._current_autograd_node() is not None:
            # A factory inside an autograd formula builds from a gradient's options(), i.e.
            # its *physical* device; in a GPU program that is the GPU.
            target = ld.DEVICES.cuda()
        else:
            # C++ composites pass their input's physical device (`type_as`, `x.options()`):
            # a CPU device argument here means "where the input is". Python-level CPU requests
            # were already handled by DeviceFunctionMode.
            target = None
        common = self._check(func, args, kwargs)
        if target is not None:
            common = ld.DEVICES.resolve(target)
        if common is not None and common.type == "cuda" and \
                torch.Tag.nondeterministic_seeded in func.tags:
            with gpu_generator(common):
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if target is None and func in _TRANSFERS:  # copy_: the destination's device; others:
            common = ld.DEVICES.of(args[0])  # the source's
        return tag_outputs(out, common or _CPU)

    def _check(self, func, args, kwargs) -> torch.device | None:
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = [ld.DEVICES.of(t) for t in tensors]
        cuda = {d for d in devices if d.type == "cuda"}
        if func is aten._local_scalar_dense.default and cuda:
            host_syncs.record(".item() / bool() / int() of a device tensor")
        elif func in _DATA_DEPENDENT and cuda:
            host_syncs.record(f"{func} (output size depends on device data)")
        elif func is aten.repeat_interleave.Tensor and cuda and kwargs.get("output_size") is None:
            host_syncs.record("repeat_interleave without output_size")
        elif func in _INDEXING and cuda and any(
                t.dtype == torch.bool for t in tree_flatten(args[1:])[0]
                if isinstance(t, torch.Tensor)):
            host_syncs.record(f"{func} with a boolean mask (nonzero)")
        if func in _TRANSFERS:
            if func is aten.copy_.default and ld.DEVICES.of(args[0]).type == "cpu" and \
                    ld.DEVICES.of(args[1]).type == "cuda" and not kwargs.get("non_blocking", False) \
                    and not (len(args) > 2 and args[2]):
                host_syncs.record("device-to-host copy")
            return None
        if len(cuda) > 1:
            raise DeviceMismatch(describe(func, tensors, devices))
        if not cuda:
            return _CPU if tensors else None
        (device,) = cuda
        allowed_cpu = set()
        if func in _INDEXING:  # CUDA accepts CPU index tensors in advanced indexing
            allowed_cpu = {id(t) for t in tree_flatten(args[1:])[0] if isinstance(t, torch.Tensor)}
        mutated = _mutated_args(func, args)
        for t, d in zip(tensors, devices):
            if d.type != "cpu" or id(t) in allowed_cpu:
                continue
            if t.dim() == 0 and not any(t is m for m in mutated):
                continue  # a CPU scalar operand: CUDA kernels take it by value
            raise DeviceMismatch(describe(func, tensors, devices))
        return device


def _has_tensor(args, kwargs) -> bool:
    return any(isinstance(t, torch.Tensor) for t in tree_flatten((args, kwargs))[0])


def _mutated_args(func, args) -> list:
    schema = func._schema
    out = []
    for arg, value in zip(schema.arguments, args):
        if arg.alias_info is not None and arg.alias_info.is_write:
            out.append(value)
    return out


def _patch_backward_functions(function_mode: DeviceFunctionMode) -> None:
    """Give custom autograd Functions' backward the function mode (see module docstring)."""
    from torch.autograd.function import BackwardCFunction

    original = BackwardCFunction.apply

    def apply(self, *args):
        with function_mode:
            return original(self, *args)

    BackwardCFunction.apply = apply


_MODES: list = []


def install(local_rank: int) -> None:
    """Tag tensors with logical devices for the rest of this process (one rank)."""
    if _MODES:
        return
    ld.DEVICES = LogicalDevices(local_rank)
    function_mode, dispatch_mode = DeviceFunctionMode(), DeviceDispatchMode()
    _patch_backward_functions(function_mode)
    dispatch_mode.__enter__()
    function_mode.__enter__()
    _MODES.extend([dispatch_mode, function_mode])


__all__ = ["DeviceMismatch", "install"]
