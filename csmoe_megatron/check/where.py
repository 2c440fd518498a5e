"""Where a device problem happened, in words a user can act on: the op, the devices, the module
being run (by its name in the model), and the lines of our code and megatron's that called it."""

from __future__ import annotations

import functools
import os
import sys

import torch


class DeviceMismatch(RuntimeError):
    """A tensor on the wrong (logical) device, as a CUDA run would have failed or misbehaved."""


# Module names in the model ("decoder.layers.1.mlp"), registered once the model is built, and
# the stack of modules whose forward is running.
_NAMES: dict[int, str] = {}
_STACK: list = []
_HOOKS: list = []

# Frames are told apart by the installed packages' own directories, never by words in a path: a
# checkout under /check/ or /home/torch/ must not hide (or show) frames.
_CHECK_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PACKAGE_DIR = os.path.dirname(_CHECK_DIR.rstrip(os.sep)) + os.sep


@functools.lru_cache(maxsize=None)
def _megatron_core_dir() -> str:
    import megatron.core
    return os.path.dirname(os.path.abspath(megatron.core.__file__)) + os.sep


@functools.lru_cache(maxsize=None)
def _short(path: str) -> str | None:
    """`csmoe_megatron/...` or `megatron/core/...` for our frames and megatron's; None otherwise."""
    path = os.path.abspath(path)
    if path.startswith(_CHECK_DIR):
        return None
    if path.startswith(_PACKAGE_DIR):
        return "csmoe_megatron" + os.sep + path[len(_PACKAGE_DIR):]
    core = _megatron_core_dir()
    if path.startswith(core):
        return "megatron" + os.sep + "core" + os.sep + path[len(core):]
    return None


def name_modules(root: torch.nn.Module, prefix: str = "") -> None:
    for name, module in root.named_modules(prefix=prefix):
        _NAMES.setdefault(id(module), name or type(module).__name__)


def track_modules() -> None:
    """Keep the stack of running modules (global forward hooks), for messages."""
    if _HOOKS:
        return
    from torch.nn.modules.module import (register_module_forward_hook,
                                         register_module_forward_pre_hook)

    def enter(module, args):
        _STACK.append(module)

    def leave(module, args, output):
        if _STACK and _STACK[-1] is module:
            _STACK.pop()

    _HOOKS.append(register_module_forward_pre_hook(enter))
    _HOOKS.append(register_module_forward_hook(leave))


def running_module() -> str:
    if _STACK:
        module = _STACK[-1]
        return f"module {_NAMES.get(id(module), '?')} ({type(module).__name__})"
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward node {node.name()}"
    return "no module (outside forward)"


def site(depth: int = 3) -> str:
    """The innermost `depth` frames of our code or megatron-core's, innermost first."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None and len(frames) < depth:
        short = _short(frame.f_code.co_filename)
        if short is not None:
            frames.append(f"{short}:{frame.f_lineno} ({frame.f_code.co_name})")
        frame = frame.f_back
    return " <- ".join(frames) or "(no project frame on the stack)"


def describe(func, tensors, devices) -> str:
    operands = ", ".join(f"{list(t.shape)} {str(t.dtype).replace('torch.', '')} on {d}"
                         for t, d in zip(tensors, devices))
    return (f"{func} mixes devices {sorted({str(d) for d in devices})} (operands: {operands}); "
            f"in {running_module()}; at {site()}")
