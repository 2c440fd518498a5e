"""Run megatron-core on CPU with the gloo backend.

megatron-core assumes CUDA in a handful of places (device literals, CUDA streams, the CUDA
RNG tracker, NCCL-only collective shapes). `install()` patches exactly those, and only when
CUDA is absent: on a GPU machine it returns without touching anything. It is called once at
start-up by the entry points (train, bench, tests) and imported by nothing else.

Each workaround lives in one small module with a one-line reason:
  device_mode.py       CUDA device arguments / .cuda() / type names -> CPU (a TorchFunctionMode)
  cuda_stubs.py        streams, synchronize, current_device, RNG tracker on the CPU generator
  gloo_collectives.py  uneven all-gather / reduce-scatter and tensor split sizes for gloo
  megatron_fixes.py    small name/shape issues of megatron-core 0.16.1 without TE; applied
                       with CUDA too (they are megatron's, not the CPU's)
"""

from __future__ import annotations

import torch

_INSTALLED = False


def cpu_mode_needed() -> bool:
    """True when there is no usable CUDA device, i.e. when the compat layer must be active."""
    return not torch.cuda.is_available()


def install(force: bool = False) -> bool:
    """Activate the CPU compatibility layer if CUDA is absent. Idempotent. megatron's own
    fixes (megatron_fixes.py) are applied in every case.

    Returns True when the CPU layer is active. `force=True` is for tests only.
    """
    global _INSTALLED
    from . import megatron_fixes

    megatron_fixes.install()
    if _INSTALLED:
        return True
    if not (force or cpu_mode_needed()):
        return False
    from . import cuda_stubs, device_mode, gloo_collectives

    cuda_stubs.install()
    gloo_collectives.install()
    device_mode.install()
    _INSTALLED = True
    return True


# megatron-core announces each CPU fallback at import; without CUDA that is the expected
# state, so these say nothing new (GPU runs keep every warning).
_EXPECTED_ON_CPU = (r".*(Transformer Engine|Apex).* not installed.*",
                    r"full scope is deprecated.*",
                    r".*all_gather_into_tensor. is deprecated.*")


def quiet_expected_warnings() -> None:
    """Entry points call this before importing megatron-core (CPU only)."""
    if cpu_mode_needed():
        import warnings

        for pattern in _EXPECTED_ON_CPU:
            warnings.filterwarnings("ignore", message=pattern)


def is_installed() -> bool:
    return _INSTALLED
