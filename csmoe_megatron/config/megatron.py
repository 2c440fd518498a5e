"""Translate our typed config into megatron-core's config objects.

The only place that knows both vocabularies; everything megatron-specific about a run is
decided here (dtype flags, MoE flags, DDP/optimizer settings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schema import ExperimentConfig


def params_dtype(cfg: ExperimentConfig) -> torch.dtype:
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


def transformer_config(cfg: ExperimentConfig, use_cpu: bool, fast_paths=None):
    """`fast_paths`: model.fast_paths.FastPaths of this run (None: every fast path off)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    m, moe, p = cfg.model, cfg.model.moe, cfg.parallel
    fast = fast_paths or _AllOff()
    bf16 = cfg.train.precision == "bf16"
    swiglu = m.activation == "swiglu"
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization=m.normalization,
        gated_linear_unit=swiglu,
        activation_func=F.silu if swiglu else F.gelu,
        add_bias_linear=False,
        init_method_std=m.init_method_std,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        # Parallel layout.
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline,
        expert_model_parallel_size=p.expert,
        expert_tensor_parallel_size=p.expert_tensor or p.tensor,
        context_parallel_size=p.context,
        sequence_parallel=p.sequence_parallel,
        pipeline_dtype=params_dtype(cfg),
        # gloo runs a batch of isend/irecv as separate ops matched in posting order; with
        # interleaving on a 2-stage ring, next == prev and an activation and a gradient of the
        # same shape can swap. megatron's unbatched path orders the ops by even/odd rank.
        batch_p2p_comm=not use_cpu,
        # Precision.
        bf16=bf16,
        params_dtype=params_dtype(cfg),
        # Kernels: fused paths need CUDA (and TE/Apex); model/fast_paths.py decides.
        bias_activation_fusion=fast.bias_activation_fusion,
        bias_dropout_fusion=fast.bias_dropout_fusion,
        masked_softmax_fusion=fast.masked_softmax_fusion,
        apply_rope_fusion=fast.rope_fusion,
        gradient_accumulation_fusion=fast.gradient_accumulation_fusion,
        persist_layer_norm=False,
        use_cpu_initialization=use_cpu,
        # MoE.
        num_moe_experts=moe.num_experts,
        moe_layer_freq=moe.layer_freq,
        moe_ffn_hidden_size=moe.ffn_hidden_size,
        moe_router_topk=moe.top_k,
        moe_router_load_balancing_type="aux_loss",
        moe_router_score_function=moe.score_function,
        moe_router_enable_expert_bias=moe.expert_bias,
        moe_router_bias_update_rate=moe.expert_bias_update_rate,
        moe_aux_loss_coeff=moe.aux_loss_coeff,
        moe_z_loss_coeff=moe.z_loss_coeff,
        moe_token_dispatcher_type=moe.token_dispatcher,
        moe_expert_capacity_factor=moe.capacity_factor,
        moe_pad_expert_input_to_capacity=moe.pad_to_capacity,
        moe_grouped_gemm=fast.grouped_gemm,
        moe_router_dtype="fp32",
        moe_permute_fusion=fast.permute_fusion,
        overlap_moe_expert_parallel_comm=p.moe_a2a_overlap,
    )


class _AllOff:
    """No fast path (tests and tools that build a config without resolving them)."""

    def __getattr__(self, name):
        return False


def ddp_config(cfg: ExperimentConfig):
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        check_for_nan_in_grad=False,  # our loop checks loss and grad norm itself (train.on_nan)
        bucket_size=None,
    )


def optimizer_config(cfg: ExperimentConfig):
    from megatron.core.optimizer import OptimizerConfig

    t = cfg.train
    return OptimizerConfig(
        optimizer="adam",
        lr=t.lr,
        min_lr=t.min_lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_eps=t.adam_eps,
        clip_grad=t.clip_grad,
        bf16=t.precision == "bf16",
        params_dtype=params_dtype(cfg),
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
