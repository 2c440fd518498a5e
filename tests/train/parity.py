"""Layout parity beyond the loss: a parallel run and the single-process run of the same seed and
data must agree step by step in loss and gradient norm, and in every parameter at the end.

The loss alone is a weak witness: Adam's update is invariant to a constant gradient scale, so a
bug that multiplies expert gradients by the EP size changes the loss by almost nothing. The
gradient norm (computed before clipping) sees the scale, and the parameters see everything that
reached the optimizer. Parameters are read from each run's final dist checkpoint, whose tensors
are global (layout-free), so two layouts compare key by key.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from tests.train.trainer_runs import read_metrics

# Every parity run writes a final checkpoint to compare parameters with.
SAVE_AT_END = ["checkpoint.save_at_end=true"]

# fp32 on CPU, 4 steps, measured on tp2_sp_ep2 and ep2_dp4_distopt_overlap: loss within 1.8e-7,
# grad norm within a relative 4.8e-7, parameters within 5.7e-7. The bounds leave room for
# reduction order and sit far below what a wrong scale or shard gives (docs/testing.md).
LOSS_ATOL = 2e-4
GRAD_NORM_RTOL = 1e-5
PARAM_ATOL = 2e-5


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's parameters in the run's newest checkpoint, as global tensors by key."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt = ckpt_root / (ckpt_root / "latest").read_text().strip()
    reader = FileSystemReader(str(ckpt))
    metadata = reader.read_metadata().state_dict_metadata
    weights = {key: torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in metadata.items()
               if "optimizer" not in key and "_extra_state" not in key
               and hasattr(meta, "size")}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(weights, storage_reader=reader, no_dist=True)
    return weights


def assert_same_training(got_dir: Path, ref_dir: Path, label: str,
                         keys: tuple[str, ...] = ("loss",)) -> None:
    got, ref = read_metrics(got_dir), read_metrics(ref_dir)
    assert [r["step"] for r in got] == [r["step"] for r in ref], label
    # The gradient norm first: it is the earliest witness of a wrong gradient (step 1).
    for a, b in zip(got, ref):
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=GRAD_NORM_RTOL), \
            f"{label}: step {a['step']} grad norm {a['grad_norm']} vs single process {b['grad_norm']}"
    for key in keys:
        diffs = [abs(a[key] - b[key]) for a, b in zip(got, ref)]
        assert max(diffs) < LOSS_ATOL, f"{label}: {key} differs by {diffs}"
    got_w, ref_w = final_weights(got_dir), final_weights(ref_dir)
    assert sorted(got_w) == sorted(ref_w), f"{label}: different parameters in the checkpoints"
    for key, value in ref_w.items():
        err = (got_w[key] - value).abs().max().item()
        assert err < PARAM_ATOL, f"{label}: parameter {key} differs by {err} after training"
