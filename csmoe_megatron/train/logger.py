"""One logging call per step feeds the console, metrics.jsonl and TensorBoard.

Only the logging rank (rank 0) writes; the others get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, total_steps: int):
        self.enabled = enabled
        self.total_steps = total_steps
        self._tb = None
        self._jsonl = None
        self._start = time.time()
        self._first_step = None
        if not enabled:
            return
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stdout, flush=True)

    def log_step(self, step: int, metrics: dict, console: bool = True) -> None:
        """`step` is the number of completed optimizer steps (1-based in the log). With
        console=False the record goes to metrics.jsonl and TensorBoard only."""
        if not self.enabled:
            return
        if self._first_step is None:
            self._first_step = step - 1
            self._start_steps_time = time.time() - metrics.get("step_time_s", 0.0)
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
        if not console:
            return
        done = step - self._first_step
        elapsed = time.time() - self._start_steps_time
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        parts = [f"step {step:>6}/{self.total_steps}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "val_loss" in metrics:
            parts.append(f"val_loss {metrics['val_loss']:.4f} ppl {metrics.get('val_ppl', float('nan')):.1f}")
        parts.append(f"lr {metrics.get('lr', 0.0):.2e}")
        if "grad_norm" in metrics:
            parts.append(f"gnorm {metrics['grad_norm']:.3f}")
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
        if "tflops" in metrics:
            parts.append(f"{metrics['tflops']:.1f} TFLOP/s")
        if "moe/competition_rate_cumulative" in metrics:
            parts.append(f"compete {metrics['moe/competition_rate_cumulative']:.3f}")
        parts.append(f"ETA {_fmt_duration(eta)}")
        print(" | ".join(parts), flush=True)

    def add_image(self, tag: str, image_chw, step: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image_chw, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _plain(value):
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.item()
    except ImportError:
        pass
    return value
