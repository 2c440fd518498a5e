"""One logging call per step feeds the console, metrics.jsonl and TensorBoard.

Only the logging rank (rank 0) writes; the others get a logger whose methods do nothing.
`begin(step)` opens the outputs once the run knows the step it starts from: a resumed run
first drops what lies past its checkpoint (written after the save by the run it resumes), so
each step is in metrics.jsonl and TensorBoard once.
"""

from __future__ import annotations

import json
import math
import os
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
        self._run_dir = run_dir
        self._tensorboard = tensorboard

    def begin(self, step: int) -> None:
        """Open metrics.jsonl and TensorBoard for a run starting after `step` completed steps
        (0: from scratch), dropping their records of later steps."""
        if not self.enabled:
            return
        path = self._run_dir / "metrics.jsonl"
        _drop_records_after(path, step)
        self._jsonl = open(path, "a", buffering=1)
        if self._tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # TensorBoard hides the events of steps >= purge_step written before this one.
            self._tb = SummaryWriter(log_dir=str(self._run_dir / "tb"), purge_step=step + 1)

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


def _drop_records_after(path, step: int) -> None:
    """Rewrite metrics.jsonl without the records past `step`, atomically (a crash leaves the
    old file or the new one). A torn last line (the writer was killed mid-line) goes too."""
    if not path.is_file():
        return
    kept, dropped = [], False
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        dropped |= not keep
    if not dropped:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _plain(value):
    try:
        import torch

        if isinstance(value, torch.Tensor):
            return value.item()
    except ImportError:
        pass
    return value
