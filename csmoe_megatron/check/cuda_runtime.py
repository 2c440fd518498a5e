"""torch.cuda as a GPU rank sees it, on a CPU-only torch build.

`torch.cuda.is_available()` is True, device indices are ints, this rank owns GPU `local_rank`
of `local_world_size`; streams and events are real objects whose synchronize() counts as a
host sync; the CUDA RNG is the CPU generator (data lives there); memory statistics are zero.
This is the runtime a GPU program talks to: our code and megatron-core take their GPU branches
on it, while emulated_cuda.py checks where their tensors live.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.cuda.nccl

from . import host_syncs

DEVICE_NAME = "Emulated CUDA (csmoe-check, CPU)"


class Event:
    def __init__(self, enable_timing=False, blocking=False, interprocess=False):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass  # device-side wait: no host sync

    def synchronize(self):
        host_syncs.record("cuda event synchronize")

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


class Stream:
    def __init__(self, device=None, priority=0, **kwargs):
        self.device = torch.device("cuda", torch.cuda.current_device())

    def synchronize(self):
        host_syncs.record("cuda stream synchronize")

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event or Event()

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_STATE = types.SimpleNamespace(device=0, count=1, stream=None)


def _device_index(device=None) -> int:
    if device is None:
        return _STATE.device
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return _STATE.device if device.index is None else device.index


def _set_device(device) -> None:
    index = _device_index(device)
    if not 0 <= index < _STATE.count:
        raise RuntimeError(f"CUDA error: invalid device ordinal {index} (this emulated node has "
                           f"{_STATE.count} GPUs)")
    _STATE.device = index


def _synchronize(device=None) -> None:
    host_syncs.record("torch.cuda.synchronize")


def _properties(device=None):
    return types.SimpleNamespace(name=DEVICE_NAME, major=9, minor=0, total_memory=80 * 2**30,
                                 multi_processor_count=132, is_integrated=False)


def install(local_rank: int, local_world_size: int) -> None:
    cuda = torch.cuda
    _STATE.count, _STATE.device = local_world_size, local_rank
    cuda.is_available = lambda: True
    cuda.is_initialized = lambda: True
    cuda._initialized = True
    cuda._lazy_init = lambda: None
    cuda.device_count = lambda: _STATE.count
    # The C hooks too: torch modules that imported torch.cuda functions by name call them.
    torch._C._cuda_getDevice = lambda: _STATE.device
    torch._C._cuda_setDevice = lambda device: _set_device(device)
    cuda.current_device = lambda: _STATE.device
    cuda.set_device = _set_device
    cuda.get_device_name = lambda device=None: DEVICE_NAME
    cuda.get_device_capability = lambda device=None: (9, 0)
    cuda.get_device_properties = _properties
    cuda.is_bf16_supported = lambda including_emulation=True: True
    cuda.Stream, cuda.Event = Stream, Event
    torch.Tensor.record_stream = lambda self, stream: None  # an allocator hint on a GPU
    _STATE.stream = Stream()
    cuda.current_stream = lambda device=None: _STATE.stream
    cuda.default_stream = lambda device=None: _STATE.stream
    cuda.stream = lambda stream=None: contextlib.nullcontext(stream)
    cuda.synchronize = _synchronize
    cuda.device = lambda device=None: contextlib.nullcontext()
    # One generator per GPU, apart from the CPU's, as on a GPU (random ops on the emulated
    # devices still draw from the CPU generator: the check is about placement, not values).
    cuda.default_generators = tuple(torch.Generator() for _ in range(local_world_size))
    current = lambda: cuda.default_generators[_STATE.device]  # noqa: E731
    cuda.manual_seed = lambda seed: current().manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: [g.manual_seed(int(seed)) for g in cuda.default_generators]
    cuda.get_rng_state = lambda device="cuda": current().get_state()
    cuda.set_rng_state = lambda state, device="cuda": current().set_state(state)
    cuda.get_rng_state_all = lambda: [g.get_state() for g in cuda.default_generators]
    cuda.set_rng_state_all = lambda states: [g.set_state(s) for g, s in
                                             zip(cuda.default_generators, states)]
    for name in ("manual_seed", "manual_seed_all", "get_rng_state", "set_rng_state",
                 "get_rng_state_all", "set_rng_state_all"):
        setattr(torch.cuda.random, name, getattr(cuda, name))
    for name in ("max_memory_allocated", "memory_allocated", "max_memory_reserved",
                 "memory_reserved"):
        setattr(cuda, name, lambda device=None: 0)
    cuda.mem_get_info = lambda device=None: (80 * 2**30, 80 * 2**30)
    cuda.reset_peak_memory_stats = lambda device=None: None
    cuda.reset_max_memory_allocated = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.memory_stats = lambda device=None: {}
    cuda.nccl.version = lambda: (0, 0, 0)  # run_info records it; no real NCCL here
    cuda.nvtx = types.SimpleNamespace(range_push=lambda *a, **k: None,
                                      range_pop=lambda *a, **k: None,
                                      range=lambda *a, **k: contextlib.nullcontext(),
                                      mark=lambda *a, **k: None)
