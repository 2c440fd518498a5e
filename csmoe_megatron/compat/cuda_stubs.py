"""CPU stand-ins for the torch.cuda calls megatron-core makes unconditionally.

Only installed when CUDA is absent (see compat.install). Each stub says why it exists.
"""

from __future__ import annotations

import contextlib

import torch


class _NullStream:
    """megatron's alltoall dispatcher creates a side stream for D2H copies; on CPU all work is
    synchronous, so a stream that does nothing is exact."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return _NullEvent()

    def query(self):
        return True


class _NullEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass

    def wait(self, stream=None):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


_DEFAULT_STREAM = _NullStream()
_CPU = torch.device("cpu")


def _install_streams() -> None:
    torch.cuda.Stream = _NullStream
    torch.cuda.Event = _NullEvent
    torch.cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    torch.cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()
    torch.cuda.synchronize = lambda device=None: None
    # megatron passes this as device= (also inside backward, where no torch-function mode
    # runs): answering the CPU device is exact wherever it is used as a device.
    torch.cuda.current_device = lambda: _CPU
    torch.cuda.device_count = lambda: 0
    torch.Tensor.record_stream = lambda self, stream: None
    # Memory statistics are reported as zero rather than raising.
    torch.cuda.max_memory_allocated = lambda device=None: 0
    torch.cuda.memory_allocated = lambda device=None: 0
    torch.cuda.reset_peak_memory_stats = lambda device=None: None
    torch.cuda.empty_cache = lambda: None


def _install_rng_tracker() -> None:
    """megatron's CudaRNGStatesTracker keeps CUDA generator states for dropout/init forks; the
    same bookkeeping over the CPU generator keeps TP/EP dropout streams distinct on CPU."""
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        def add(self, name, seed):
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    # model_parallel_cuda_manual_seed seeds the CUDA default generator first; seed the CPU one.
    torch.cuda.manual_seed = lambda seed: None
    torch.cuda.manual_seed_all = lambda seed: None
    mrandom.initialize_rng_tracker(force_reset=True)


def install() -> None:
    _install_streams()
    _install_rng_tracker()
