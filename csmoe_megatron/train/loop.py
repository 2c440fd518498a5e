"""The training loop: read it top to bottom to follow one run.

config -> process groups -> data -> model (DDP) -> optimizer -> resume -> for each step:
[CompeteSMoE step context] -> megatron forward/backward schedule -> NaN guard -> optimizer
step -> log (console, metrics.jsonl, TensorBoard) -> eval -> checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from .. import compat
from ..analysis.loss_curve import write_loss_curve
from ..config import save_config, total_steps, validate
from ..config.megatron import transformer_config
from ..config.schema import ExperimentConfig
from ..data import MicroBatchIterator
from ..device import current_device
from ..model import build_model_chunks, fast_paths, padded_vocab_size
from ..moe import context as moe_context
from . import checkpoint as ckpt
from . import ddp
from .checkpoint_init import init_from_checkpoint
from .data_setup import (build_run_datasets, check_tokenizer_matches_checkpoint,
                         copy_tokenizer_to_run, resolve_tokenizer_and_prefixes)
from .distributed import destroy_distributed, init_distributed, is_logging_rank, launch_world_size
from .heldout import build_heldout_sets, finish_with_heldout, periodic_heldout_metrics
from .flops import flops_per_token, parameter_counts, peak_tflops
from .layout import changes as layout_changes
from .layout import current_layout
from .logger import RunLogger
from .moe_logging import MoEMetricsLogger
from .optim import build_optimizer
from .run_info import record_launch
from .step import forward_step
from .stop_signal import StopSignal, shield_checkpoint_writer


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (non-finite loss with train.on_nan=stop)."""


def run_training(cfg: ExperimentConfig) -> dict:
    """Validate, set up process groups, train, tear down. Returns the last metrics."""
    # First: a stop signal during the long setup (rendezvous, data, model) stops after step 1.
    stop_signal = StopSignal()
    validate(cfg, launch_world_size())
    init_distributed(cfg)
    try:
        return _train(cfg, stop_signal)
    finally:
        destroy_distributed()


def _train(cfg: ExperimentConfig, stop_signal: StopSignal) -> dict:
    rank = dist.get_rank()
    run_dir = Path(cfg.run.dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    steps = total_steps(cfg)
    t = cfg.train
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    num_micro = t.global_batch_size // (t.micro_batch_size * dp_size)
    log = RunLogger(run_dir, is_logging_rank(), cfg.logging.tensorboard, steps)

    # Data.
    tokenizer, prefixes, tokenizer_dir = resolve_tokenizer_and_prefixes(cfg, log.info)
    copy_tokenizer_to_run(tokenizer_dir, run_dir)
    vocab = cfg.model.vocab_size or padded_vocab_size(tokenizer.vocab_size, cfg)
    if vocab < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary "
                         f"({tokenizer.vocab_size}); remove model.vocab_size to size it from the "
                         f"tokenizer")
    train_ds, valid_ds, _ = build_run_datasets(cfg, tokenizer, prefixes, steps, run_dir)
    heldout = build_heldout_sets(cfg, tokenizer)  # data.valid_prefixes / test_prefixes

    # Model, optimizer.
    fast = fast_paths.resolve(cfg)
    log.info(fast.summary())
    tconfig = transformer_config(cfg, use_cpu=compat.is_installed(), fast_paths=fast)
    chunks = ddp.wrap(cfg, tconfig, build_model_chunks(cfg, tconfig, vocab,
                                                       use_te=fast.transformer_engine))
    optimizer, scheduler = build_optimizer(cfg, chunks, steps)

    # Resume.
    step, consumed, progress = 0, 0, {}
    ckpt_root = run_dir / "checkpoints"
    latest = ckpt.latest_checkpoint(ckpt_root, log.info) if cfg.checkpoint.resume else None
    layout = current_layout(cfg, dist.get_world_size())
    if latest is not None:
        check_tokenizer_matches_checkpoint(tokenizer, latest)
        with _known_load_deprecations_silenced():
            progress = ckpt.load_checkpoint(latest, chunks, optimizer, scheduler, layout, t.seed)
        step, consumed = progress["step"], progress["consumed_samples"]
        log.info(f"resumed from {latest} at step {step}")
        changed = layout_changes(progress.get("layout", layout), layout)
        if changed:
            log.info(f"resumed on another layout ({', '.join(changed)}): model and optimizer "
                     f"state resharded; RNG re-seeded from train.seed and the step")
    elif cfg.checkpoint.init_from:
        with _known_load_deprecations_silenced():
            source = init_from_checkpoint(cfg.checkpoint.init_from, chunks, optimizer, cfg, vocab)
        log.info(f"model weights from {source} (checkpoint.init_from); optimizer fresh, step 0")
    # Written once the run is sure to start, naming the checkpoint it resumed from.
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")
        record_launch(run_dir, latest)

    moe_context.configure_run(seed=t.seed, total_steps=steps,
                              num_moe_layers=cfg.model.num_moe_layers)
    moe_log = MoEMetricsLogger(cfg, run_dir, log, num_micro)
    moe_log.load_state_dict(progress.get("moe_logging", {}))
    log.begin(step)  # drops what the outputs hold past the resumed step
    train_iters = [MicroBatchIterator(train_ds, t.micro_batch_size, dp_rank, dp_size, consumed)
                   for _ in chunks]
    fwd_bwd = get_forward_backward_func()
    tokens_per_step = t.global_batch_size * cfg.model.seq_length
    model_flops = flops_per_token(cfg, vocab) * tokens_per_step
    peak = peak_tflops()
    total_params, active_params = parameter_counts(cfg, vocab)
    log.info(f"run {run_dir}: {total_params / 1e6:.2f}M parameters ({active_params / 1e6:.2f}M "
             f"active per token), {steps} steps, world {dist.get_world_size()}, dp {dp_size}, "
             f"{num_micro} micro-batches/step")

    metrics: dict = {}
    first_step, train_time = step, 0.0
    # Training time over all launches, each launch's first step left out (one-off compilation
    # and allocation): what tokens/s and equal-time comparisons between runs should see.
    timed = {"train_time_s": float(progress.get("train_time_s", 0.0)),
             "timed_steps": int(progress.get("timed_steps", 0))}
    while step < steps:
        start = time.time()
        moe_context.set_step(step)
        for chunk in chunks:
            chunk.train()
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        losses = fwd_bwd(forward_step_func=forward_step,
                         data_iterator=train_iters if len(chunks) > 1 else train_iters[0],
                         model=chunks if len(chunks) > 1 else chunks[0],
                         num_microbatches=num_micro, seq_length=cfg.model.seq_length,
                         micro_batch_size=t.micro_batch_size, forward_only=False)
        if t.debug_inject_nan_at_step == step + 1:
            _inject_nan_gradient(chunks)
        loss, finite, stop_requested = _step_outcome(losses, chunks, stop_signal.received)
        if not finite:
            if t.on_nan == "stop":
                raise TrainingStopped(
                    f"non-finite loss or gradient at step {step + 1}; stopping without saving, "
                    f"the last good checkpoint in {ckpt_root} is kept. Lower train.lr, check the "
                    f"data, or set train.on_nan=skip to skip such steps")
            log.info(f"step {step + 1}: non-finite loss or gradient, step skipped (train.on_nan=skip)")
            step += 1
            scheduler.step(increment=t.global_batch_size)
            moe_log.end_step(skipped=True)  # drops the skipped step's MoE records
            log.log_step(step, {"skipped_step": 1.0, "lr": optimizer.param_groups[0]["lr"]})
            continue
        _, grad_norm, _ = optimizer.step()
        scheduler.step(increment=t.global_batch_size)
        moe_log.end_step()
        step += 1
        elapsed = time.time() - start
        train_time += elapsed
        metrics = {"loss": loss, "lr": optimizer.param_groups[0]["lr"],
                   "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                   "tokens_per_s": tokens_per_step / elapsed, "step_time_s": elapsed,
                   # Average since this launch began, over training steps only (no eval/saves).
                   "tokens_per_s_avg": (step - first_step) * tokens_per_step / train_time,
                   **_timed(timed, step - first_step, elapsed),
                   "consumed_samples": train_iters[0].consumed_samples}
        if peak is not None:
            metrics["tflops"] = model_flops / elapsed / dist.get_world_size() / 1e12
            metrics["mfu"] = metrics["tflops"] / peak
        if torch.cuda.is_available():  # the allocator's own count: no device sync
            metrics["mem_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        evaluated = t.eval_interval > 0 and (step % t.eval_interval == 0 or step == steps)
        if evaluated:
            with ddp.params_gathered(chunks):
                # The first eval_iters batches of the held-out set, else of the valid split.
                windows = heldout.get("valid", valid_ds)
                metrics.update(periodic_heldout_metrics(cfg, chunks, windows, dp_rank, dp_size,
                                                        num_micro, fwd_bwd))
        stop_now = stop_requested or (
            t.exit_after_steps is not None and step - first_step >= t.exit_after_steps)
        interval = cfg.checkpoint.save_interval
        saving = (interval > 0 and step % interval == 0) or stop_now or (
            step == steps and cfg.checkpoint.save_at_end)
        # MoE numbers are reduced only when logged (a collective: the same steps on all ranks);
        # a saved step is logged too, so no unlogged interval is lost at a resume.
        if step % cfg.logging.interval == 0 or step == steps or evaluated or saving \
                or moe_log.images_due(step):
            metrics.update(moe_log.pop(step))
            log.log_step(step, metrics)
        if saving:
            shield_checkpoint_writer()
            with ddp.params_gathered(chunks):
                ckpt.save_checkpoint(ckpt_root, step, chunks, optimizer, scheduler,
                                     {"step": step,
                                      "consumed_samples": train_iters[0].consumed_samples,
                                      **timed,
                                      "moe_logging": moe_log.state_dict(), "layout": layout},
                                     cfg.checkpoint.keep_last, run_dir / "tokenizer")
            log.info(f"saved checkpoint at step {step}")
        if stop_now:
            log.info(f"stopping early (signal or train.exit_after_steps): checkpoint saved at "
                     f"step {step}; rerun the same command to resume")
            break
    if step >= steps:  # finished: whole held-out sets, final_eval.json
        with ddp.params_gathered(chunks):
            metrics.update(finish_with_heldout(
                cfg, chunks, heldout, tokenizer, dp_rank, dp_size, num_micro, fwd_bwd, log,
                step, timed, metrics))
    log.close()
    if log.enabled:  # the logging rank, which wrote metrics.jsonl
        write_loss_curve(run_dir)
    return metrics


def _timed(timed: dict, steps_this_launch: int, elapsed: float) -> dict:
    if steps_this_launch > 1:
        timed["train_time_s"] += elapsed
        timed["timed_steps"] += 1
    return dict(timed)


def _sum_reports(losses) -> torch.Tensor:
    """(loss sum, token count) of this rank's micro-batches, on the device (no host read)."""
    total = torch.zeros(2, dtype=torch.float64, device=current_device())
    for item in losses or []:
        total += item["lm loss"].detach().to(total)
    return total


def _step_outcome(losses, chunks, stop_requested: bool) -> tuple[float, bool, bool]:
    """(mean loss, loss and every gradient finite, a stop signal reached any rank), agreed by
    every rank in one all-reduce and read in one host sync per step."""
    grads = [p.main_grad for c in chunks for p in c.parameters()
             if getattr(p, "main_grad", None) is not None]
    stats = torch.zeros(4, dtype=torch.float64, device=current_device())
    stats[:2] = _sum_reports(losses)
    if grads:
        stats[2] = torch.stack([torch.isfinite(g).all() for g in grads]).logical_not().any()
    stats[3] = float(stop_requested)
    dist.all_reduce(stats)
    loss_sum, tokens, nonfinite, stop = stats.tolist()
    loss = loss_sum / max(tokens, 1.0)
    return loss, nonfinite == 0 and math.isfinite(loss), stop > 0


def _inject_nan_gradient(chunks) -> None:
    """Fault injection (train.debug_inject_nan_at_step): one rank's gradient goes NaN, so the
    cross-rank agreement in _step_outcome is exercised too."""
    if dist.get_rank() != 0:
        return
    for p in chunks[0].parameters():
        if getattr(p, "main_grad", None) is not None:
            p.main_grad.fill_(float("nan"))
            return


@contextlib.contextmanager
def _known_load_deprecations_silenced():
    """megatron-core 0.16's checkpoint loading calls torch APIs that torch has deprecated (a
    FutureWarning each, at every resume, nothing a user can act on): silence those two only."""
    with warnings.catch_warnings():
        for message in (r"`load_state_dict` is deprecated", r"Please use DTensor instead"):
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield
