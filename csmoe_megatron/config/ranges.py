"""Numeric ranges of single keys: a learning rate, a beta, a fraction outside its range is
refused before any process starts, naming the key, the allowed range and the value given
(instead of a torch error from inside the optimizer). NaN is outside every range."""

from __future__ import annotations

import math

from .load import ConfigError
from .schema import ExperimentConfig

# key -> (low, high, low included, high included, what the key is). None: unbounded.
_RANGES = {
    "model.init_method_std": (0.0, None, False, True, "the std of the initial weights"),
    "model.hidden_dropout": (0.0, 1.0, True, False, "a dropout probability"),
    "model.attention_dropout": (0.0, 1.0, True, False, "a dropout probability"),
    "model.rotary_base": (0.0, None, False, True, "the RoPE base"),
    "model.make_vocab_size_divisible_by": (1, None, True, True, "a padding multiple"),
    "model.vocab_size": (1, None, True, True, "a vocabulary size"),
    "model.num_query_groups": (1, None, True, True, "a count of query groups"),
    "model.moe.aux_loss_coeff": (0.0, None, True, True, "a loss weight"),
    "model.moe.z_loss_coeff": (0.0, None, True, True, "a loss weight"),
    "model.moe.expert_bias_update_rate": (0.0, None, True, True, "a bias update step"),
    "model.moe.capacity_factor": (0.0, None, False, True, "a capacity factor (null: dropless)"),
    "model.moe.competesmoe.rate": (0.0, 1.0, True, True, "a probability (omega)"),
    "model.moe.competesmoe.warmup_fraction": (0.0, 1.0, True, False, "a fraction of the steps"),
    "model.moe.competesmoe.max_compete_per_step": (0, None, True, True, "a count of layers (A_max)"),
    "model.moe.competesmoe.router_theta": (0.0, 1.0, True, True, "a weight (alpha)"),
    "model.moe.competesmoe.router_loss_coef": (0.0, None, True, True, "a loss weight (beta)"),
    "model.moe.competesmoe.diversity_coef": (0.0, None, True, True, "a loss weight (gamma)"),
    "model.moe.competesmoe.balance_coef": (0.0, None, True, True, "a loss weight"),
    "model.moe.competesmoe.token_chunk": (0, None, True, True, "a chunk size (0: no chunking)"),
    "model.moe.competesmoe.candidates": (0, None, True, True, "a count of experts (0: all E)"),
    "parallel.virtual_pipeline": (1, None, True, True, "model chunks per pipeline rank"),
    "parallel.expert_tensor": (1, None, True, True, "a parallel size"),
    "parallel.collective_timeout_s": (0.0, None, False, True, "seconds"),
    "train.steps": (1, None, True, True, "a number of optimizer steps"),
    "train.tokens": (1, None, True, True, "a number of training tokens"),
    "train.lr": (0.0, None, False, True, "the peak learning rate"),
    "train.min_lr": (0.0, None, True, True, "the final learning rate"),
    "train.lr_warmup_steps": (0, None, True, True, "a number of steps"),
    "train.weight_decay": (0.0, None, True, True, "a decay coefficient"),
    "train.adam_beta1": (0.0, 1.0, True, False, "an Adam moment decay"),
    "train.adam_beta2": (0.0, 1.0, True, False, "an Adam moment decay"),
    "train.adam_eps": (0.0, None, False, True, "Adam's epsilon"),
    "train.clip_grad": (0.0, None, True, True, "a gradient-norm bound (0: no clipping)"),
    "train.seed": (0, None, True, True, "a random seed"),
    "train.eval_interval": (0, None, True, True, "a number of steps (0: no evaluation)"),
    "train.eval_iters": (1, None, True, True, "a number of batches"),
    "train.exit_after_steps": (1, None, True, True, "a number of steps"),
    "logging.routing_images_interval": (0, None, True, True, "a number of steps (0: none)"),
    "checkpoint.save_interval": (0, None, True, True, "a number of steps (0: only at the end)"),
    "checkpoint.keep_last": (0, None, True, True, "a number of checkpoints (0: keep all)"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _describe(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def check_ranges(cfg: ExperimentConfig) -> None:
    """ConfigError for the first key outside its range (null keys are not checked)."""
    for key, (low, high, low_in, high_in, what) in _RANGES.items():
        value = _get(cfg, key)
        if value is None:
            continue
        ok = not (isinstance(value, float) and math.isnan(value))
        ok = ok and (value >= low if low_in else value > low)
        if high is not None:
            ok = ok and (value <= high if high_in else value < high)
        if not ok:
            raise ConfigError(f"{key} must be {_describe(low, high, low_in, high_in)} ({what}), "
                              f"got {value}")
    check_split(cfg.data.split)


def check_split(split: str) -> None:
    """data.split: up to three non-negative weights train,valid,test (missing ones are 0, as
    megatron pads them) with a positive sum."""
    parts = str(split).split(",")
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        weights = []
    if not 1 <= len(weights) <= 3 or min(weights) < 0 or sum(weights) <= 0 \
            or not all(map(math.isfinite, weights)):
        raise ConfigError(f"data.split must be up to three non-negative weights train,valid,test "
                          f"(e.g. \"969,30,1\"), got {split!r}")
