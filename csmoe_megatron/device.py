"""The device this rank computes on: its GPU (the one `torch.cuda.set_device` chose) when CUDA is
present, else the CPU. Tensors our code creates outside the model go there."""

from __future__ import annotations

import torch


def current_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
