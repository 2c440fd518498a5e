"""Checks that run before any process group exists, so a bad config costs seconds, not a job.

Every message names the key(s) and the fix.
"""

from __future__ import annotations

import math

from .load import ConfigError
from .ranges import check_ranges
from .schema import ExperimentConfig

_CHOICES = {
    "model.position_embedding_type": ("rope", "learned_absolute"),
    "model.normalization": ("RMSNorm", "LayerNorm"),
    "model.activation": ("swiglu", "gelu"),
    "model.moe.router": ("competesmoe", "topk"),
    "model.moe.token_dispatcher": ("alltoall", "allgather"),
    "model.moe.competesmoe.gate_norm": ("sum", "sigmoid"),
    "model.moe.competesmoe.combine": ("winners", "full"),
    "model.moe.competesmoe.gradient": ("winners", "dense"),
    "model.moe.competesmoe.diversity_average": ("matrix", "pairs"),
    "model.moe.competesmoe.balance_count": ("top1", "all"),
    "model.moe.score_function": ("softmax", "sigmoid"),
    "parallel.backend": ("auto", "nccl", "gloo"),
    "train.lr_decay": ("cosine", "linear", "constant"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.on_nan": ("stop", "skip"),
    "data.source": ("default", "indexed", "mock"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def data_parallel_size(cfg: ExperimentConfig, world_size: int) -> int:
    p = cfg.parallel
    return world_size // (p.tensor * p.pipeline * p.context)


def validate(cfg: ExperimentConfig, world_size: int = 1) -> None:
    """Raise ConfigError on the first problem found; `world_size` is the number of ranks."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        _require(value in choices, f"{key} is {value!r}; choose one of {', '.join(map(repr, choices))}")
    check_ranges(cfg)

    m, moe, p, t = cfg.model, cfg.model.moe, cfg.parallel, cfg.train
    for key in ("model.num_layers", "model.hidden_size", "model.num_attention_heads",
                "model.ffn_hidden_size", "model.seq_length", "model.moe.num_experts",
                "model.moe.top_k", "model.moe.ffn_hidden_size", "model.moe.layer_freq",
                "parallel.tensor", "parallel.pipeline", "parallel.expert", "parallel.context",
                "train.global_batch_size", "train.micro_batch_size", "logging.interval"):
        _require(_get(cfg, key) >= 1, f"{key} must be >= 1, got {_get(cfg, key)}")

    _require(moe.top_k <= moe.num_experts,
             f"model.moe.top_k ({moe.top_k}) exceeds model.moe.num_experts ({moe.num_experts})")
    cs = moe.competesmoe
    _require(cs.candidates == 0 or moe.top_k <= cs.candidates <= moe.num_experts,
             f"model.moe.competesmoe.candidates ({cs.candidates}) must be 0 (all experts) or "
             f"between model.moe.top_k ({moe.top_k}) and model.moe.num_experts "
             f"({moe.num_experts})")
    _require(cs.candidates in (0, moe.num_experts)
             or (cs.gradient == "winners" and cs.combine == "winners"),
             "model.moe.competesmoe.candidates < num_experts needs "
             "model.moe.competesmoe.gradient=winners and combine=winners")
    _require(m.hidden_size % m.num_attention_heads == 0,
             f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads "
             f"({m.num_attention_heads})")
    groups = m.num_query_groups or m.num_attention_heads
    _require(m.num_attention_heads % groups == 0,
             f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
             f"model.num_query_groups ({groups})")

    # Parallel layout.
    model_parallel = p.tensor * p.pipeline * p.context
    _require(world_size % model_parallel == 0,
             f"world size {world_size} is not divisible by parallel.tensor*pipeline*context = "
             f"{p.tensor}*{p.pipeline}*{p.context}; launch a multiple of {model_parallel} processes "
             f"(smallest world for this layout: {smallest_world(cfg)}) or change the parallel section")
    dp = world_size // model_parallel
    etp = p.expert_tensor or p.tensor
    _require(world_size % (etp * p.expert * p.pipeline) == 0,
             f"world size {world_size} is not divisible by parallel.expert_tensor*expert*pipeline = "
             f"{etp}*{p.expert}*{p.pipeline}; launch a multiple of {etp * p.expert * p.pipeline} "
             f"processes (smallest world for this layout: {smallest_world(cfg)}) or adjust "
             f"parallel.expert / parallel.expert_tensor")
    _require(moe.num_experts % p.expert == 0,
             f"model.moe.num_experts ({moe.num_experts}) must be divisible by parallel.expert "
             f"({p.expert})")
    _require(m.num_attention_heads % p.tensor == 0,
             f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
             f"parallel.tensor ({p.tensor})")
    _require(groups % p.tensor == 0,
             f"model.num_query_groups ({groups}) must be divisible by parallel.tensor ({p.tensor})")
    _require(m.ffn_hidden_size % p.tensor == 0 and moe.ffn_hidden_size % etp == 0,
             f"model.ffn_hidden_size ({m.ffn_hidden_size}) must be divisible by parallel.tensor "
             f"({p.tensor}) and model.moe.ffn_hidden_size ({moe.ffn_hidden_size}) by "
             f"parallel.expert_tensor ({etp})")
    layers_per_stage = m.num_layers // p.pipeline
    _require(m.num_layers % p.pipeline == 0,
             f"model.num_layers ({m.num_layers}) must be divisible by parallel.pipeline ({p.pipeline})")
    if p.virtual_pipeline is not None:
        _require(p.pipeline > 1, "parallel.virtual_pipeline needs parallel.pipeline > 1")
        _require(layers_per_stage % p.virtual_pipeline == 0,
                 f"layers per pipeline stage ({layers_per_stage}) must be divisible by "
                 f"parallel.virtual_pipeline ({p.virtual_pipeline})")
    if p.tensor > 1 and moe.num_experts > 0:
        _require(p.sequence_parallel,
                 "parallel.tensor > 1 with MoE requires parallel.sequence_parallel=true "
                 "(megatron-core's MoE layers need sequence-parallel inputs)")
    if p.sequence_parallel:
        _require(p.tensor > 1, "parallel.sequence_parallel needs parallel.tensor > 1")
        _require(m.seq_length % p.tensor == 0,
                 f"model.seq_length ({m.seq_length}) must be divisible by parallel.tensor ({p.tensor}) "
                 f"with sequence parallelism")
    _require(p.context == 1, "parallel.context > 1 is not supported yet; set parallel.context=1")
    _require(not p.overlap_param_gather or p.distributed_optimizer,
             "parallel.overlap_param_gather needs parallel.distributed_optimizer=true (it "
             "overlaps the optimizer's parameter all-gather)")
    if p.moe_a2a_overlap:
        _require(moe.router == "topk",
                 "parallel.moe_a2a_overlap needs model.moe.router=topk: megatron's combined "
                 "1F1B schedule runs the MoE layer as separate dispatch/compute/combine nodes, "
                 "which bypasses the CompeteSMoE competition step; set it to false")
        _require(p.expert > 1 and moe.token_dispatcher == "alltoall" and t.precision == "bf16",
                 "parallel.moe_a2a_overlap needs parallel.expert > 1, "
                 "model.moe.token_dispatcher=alltoall and train.precision=bf16")
        _require(p.pipeline == 1 or p.virtual_pipeline,
                 "parallel.moe_a2a_overlap with parallel.pipeline > 1 needs "
                 "parallel.virtual_pipeline")
    _require(p.collective_timeout_s > 0,
             f"parallel.collective_timeout_s must be > 0 seconds, got {p.collective_timeout_s}")

    # Batch arithmetic.
    _require(t.global_batch_size % (t.micro_batch_size * dp) == 0,
             f"train.global_batch_size ({t.global_batch_size}) must be divisible by "
             f"train.micro_batch_size * data-parallel size = {t.micro_batch_size} * {dp}")
    if p.pipeline > 1 and p.virtual_pipeline:
        micro = t.global_batch_size // (t.micro_batch_size * dp)
        _require(micro % p.pipeline == 0,
                 f"interleaved pipelining needs the number of micro-batches ({micro}) to be a "
                 f"multiple of parallel.pipeline ({p.pipeline}); raise train.global_batch_size")
    _require((t.steps is None) != (t.tokens is None),
             "set exactly one of train.steps and train.tokens (the other to null)")
    _require(total_steps(cfg) >= 1, "train.steps / train.tokens give zero optimizer steps")
    _require(0 <= t.lr_warmup_steps < total_steps(cfg),
             f"train.lr_warmup_steps ({t.lr_warmup_steps}) must be >= 0 and smaller than the "
             f"number of training steps ({total_steps(cfg)}); lower train.lr_warmup_steps "
             f"(csmoe-train shortens a warm-up longer than the run by itself)")
    _require(t.min_lr <= t.lr, f"train.min_lr ({t.min_lr}) must not exceed train.lr ({t.lr})")
    _require(t.debug_inject_nan_at_step is None or t.debug_inject_nan_at_step >= 1,
             f"train.debug_inject_nan_at_step must be null or >= 1, got "
             f"{t.debug_inject_nan_at_step}")
    if t.precision == "fp16":
        raise ConfigError("train.precision=fp16 is not supported; use bf16 (GPU) or fp32")

    if cfg.data.source == "indexed":
        _require(len(cfg.data.prefixes) > 0, "data.source=indexed needs data.prefixes "
                 "(output prefixes of `csmoe-tokenizer encode`)")
        _require(cfg.data.tokenizer is not None, "data.source=indexed needs data.tokenizer (the "
                 "directory written by `csmoe-tokenizer train`)")
    if cfg.data.source == "mock":
        _require(m.vocab_size is not None, "data.source=mock needs model.vocab_size")
        _require(not cfg.data.valid_prefixes and not cfg.data.test_prefixes,
                 "data.valid_prefixes / data.test_prefixes need a tokenizer: use "
                 "data.source=default or indexed, or leave them empty with data.source=mock")
    if moe.router == "competesmoe":
        _require(moe.score_function == "softmax" and not moe.expert_bias,
                 "model.moe.score_function=sigmoid and model.moe.expert_bias are options of "
                 "model.moe.router=topk; CompeteSMoE's router is softmax without expert bias")
    _require(not moe.expert_bias or moe.score_function == "sigmoid",
             "model.moe.expert_bias needs model.moe.score_function=sigmoid (megatron-core's "
             "aux-loss-free balancing is defined for sigmoid scores)")


def total_steps(cfg: ExperimentConfig) -> int:
    t = cfg.train
    if t.steps is not None:
        return t.steps
    return t.tokens // (t.global_batch_size * cfg.model.seq_length)


def smallest_world(cfg: ExperimentConfig) -> int:
    """The fewest ranks that fit both the dense layout (TP x PP x CP) and the expert layout
    (ETP x EP x PP)."""
    p = cfg.parallel
    return math.lcm(p.tensor * p.pipeline * p.context,
                    (p.expert_tensor or p.tensor) * p.expert * p.pipeline)


def shorten_warmup(cfg: ExperimentConfig) -> str | None:
    """A run no longer than its learning-rate warm-up (e.g. `train.steps=10` on a config made
    for 400 steps) gets a warm-up of a tenth of its steps instead of a refusal. Changes `cfg`;
    returns the one-line note to show the user, or None when nothing changed."""
    t = cfg.train
    try:
        steps = total_steps(cfg)
    except (TypeError, ZeroDivisionError):  # steps/tokens malformed: validate() says so
        return None
    if steps < 1 or t.lr_warmup_steps < steps:
        return None
    before, t.lr_warmup_steps = t.lr_warmup_steps, steps // 10
    return (f"note: train.lr_warmup_steps={before} is not shorter than this {steps}-step run: "
            f"warm-up shortened to {t.lr_warmup_steps} step(s), a tenth of the run (set "
            f"train.lr_warmup_steps below {steps} to choose)")
