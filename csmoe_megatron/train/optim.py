"""Optimizer (megatron-core's, incl. the distributed optimizer) and its LR/WD scheduler."""

from __future__ import annotations

from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from ..config.megatron import optimizer_config
from ..config.schema import ExperimentConfig


def build_optimizer(cfg: ExperimentConfig, model_chunks: list, total_steps: int):
    optimizer = get_megatron_optimizer(optimizer_config(cfg), model_chunks)
    t = cfg.train
    # megatron's scheduler counts samples when stepped with increment=global_batch_size.
    gbs = t.global_batch_size
    warmup = t.lr_warmup_steps  # validated: < total_steps, as megatron requires
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup > 0 else t.lr,
        max_lr=t.lr,
        min_lr=t.min_lr,
        lr_warmup_steps=warmup * gbs,
        lr_decay_steps=total_steps * gbs,
        lr_decay_style=t.lr_decay,
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=total_steps * gbs,
        wd_incr_style="constant",
    )
    return optimizer, scheduler
