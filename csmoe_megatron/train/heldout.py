"""Held-out evaluation of a run: data.valid_prefixes / data.test_prefixes, each evaluated whole.

`build_heldout_sets` reads the sets once at start-up; `evaluate_windows` runs the model
forward-only over the first `batches` global batches of one (periodic evaluation) or all of
them; `final_heldout_metrics` reports, per set, loss (mean nats per predicted token),
perplexity and bits per byte (data/heldout.py). Reusable outside training (e.g. a checkpoint
evaluator): it needs model chunks in eval mode, a forward-backward function and the sets.
"""

from __future__ import annotations

import json
import math

import torch
import torch.distributed as dist

from ..data import MicroBatchIterator
from ..data.heldout import HeldoutWindows, bits_per_byte, utf8_bytes_of_tokens
from ..device import current_device
from .step import forward_step


def build_heldout_sets(cfg, tokenizer) -> dict[str, HeldoutWindows]:
    """{"valid": ..., "test": ...} for the configured, non-empty prefix lists."""
    pad = getattr(tokenizer, "pad", 0) or 0
    sets = {}
    for name, prefixes in (("valid", cfg.data.valid_prefixes), ("test", cfg.data.test_prefixes)):
        if prefixes:
            sets[name] = HeldoutWindows([str(p) for p in prefixes], cfg.model.seq_length, pad,
                                        pad_to=cfg.train.global_batch_size)
    return sets


def evaluate_windows(cfg, chunks, windows, dp_rank: int, dp_size: int, num_micro: int, fwd_bwd,
                     batches: int | None = None) -> tuple[float, float]:
    """(summed nats, predicted tokens) over all ranks for the first `batches` global batches
    (None: all). Collective; eval mode, never competes. One host read at the end."""
    t = cfg.train
    total_batches = len(windows) // t.global_batch_size
    batches = total_batches if batches is None else min(batches, total_batches)
    for chunk in chunks:
        chunk.eval()
    total = torch.zeros(2, dtype=torch.float64, device=current_device())
    with torch.no_grad():
        iters = [MicroBatchIterator(windows, t.micro_batch_size, dp_rank, dp_size, 0)
                 for _ in chunks]
        for _ in range(batches):
            losses = fwd_bwd(forward_step_func=forward_step,
                             data_iterator=iters if len(chunks) > 1 else iters[0],
                             model=chunks if len(chunks) > 1 else chunks[0],
                             num_microbatches=num_micro, seq_length=cfg.model.seq_length,
                             micro_batch_size=t.micro_batch_size, forward_only=True)
            for item in losses or []:
                total += item["lm loss"].detach().to(total)
    for chunk in chunks:
        chunk.train()
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

    clear_aux_losses_tracker()
    # Only last-stage ranks hold losses, each TP rank of a replica the same ones: the
    # ratio is right, the sums are counted (TP size) times; callers use the ratio and the
    # token count taken from the windows themselves.
    dist.all_reduce(total)
    nats, tokens = total.tolist()
    return nats, tokens


def periodic_heldout_metrics(cfg, chunks, windows, dp_rank: int, dp_size: int, num_micro: int,
                             fwd_bwd) -> dict:
    """val_loss / val_ppl on the first train.eval_iters global batches of the held-out set (the
    same windows every time, so evaluations compare)."""
    nats, tokens = evaluate_windows(cfg, chunks, windows, dp_rank, dp_size, num_micro, fwd_bwd,
                                    cfg.train.eval_iters)
    loss = nats / max(tokens, 1.0)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def final_heldout_metrics(cfg, chunks, sets: dict, tokenizer, dp_rank: int, dp_size: int,
                          num_micro: int, fwd_bwd) -> dict:
    """final_<set>_{loss, ppl, bpb, tokens, bytes} for every held-out set, whole."""
    out = {}
    for name, windows in sets.items():
        nats, counted = evaluate_windows(cfg, chunks, windows, dp_rank, dp_size, num_micro,
                                         fwd_bwd)
        loss = nats / max(counted, 1.0)
        tokens = windows.num_targets
        out[f"final_{name}_loss"] = loss
        out[f"final_{name}_ppl"] = math.exp(min(loss, 50.0))
        out[f"final_{name}_tokens"] = tokens
        if hasattr(tokenizer, "decode"):
            nbytes = utf8_bytes_of_tokens(tokenizer, windows.target_ids())
            out[f"final_{name}_bytes"] = nbytes
            out[f"final_{name}_bpb"] = bits_per_byte(loss * tokens, nbytes)
    return out


FINAL_EVAL_FILE = "final_eval.json"


def finish_with_heldout(cfg, chunks, sets: dict, tokenizer, dp_rank, dp_size, num_micro, fwd_bwd,
                        log, step: int, timed: dict, last_metrics: dict) -> dict:
    """At the end of a finished run: evaluate the held-out sets whole, log the numbers (one
    metrics.jsonl / TensorBoard record at the last step) and write <run.dir>/final_eval.json,
    the marker that the run is complete (csmoe-ab skips such runs). A relaunch of a finished
    run finds the file and does nothing."""
    from pathlib import Path

    path = Path(cfg.run.dir) / FINAL_EVAL_FILE
    if _finished_record(path, step) is not None:
        return {}
    out = final_heldout_metrics(cfg, chunks, sets, tokenizer, dp_rank, dp_size, num_micro,
                                fwd_bwd) if sets else {}
    if out:
        log.log_step(step, out, console=False)
        log.info("held-out: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in out.items()))
    if log.enabled:
        record = {"step": step, "steps": step, **timed,
                  "tokens": step * cfg.train.global_batch_size * cfg.model.seq_length, **out}
        for key in ("val_loss", "tokens_per_s_avg"):
            if key in last_metrics:
                record[key] = last_metrics[key]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
    return out


def _finished_record(path, step: int) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("step") == step else None
