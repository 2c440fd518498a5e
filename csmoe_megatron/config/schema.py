"""The typed sections of one experiment. Every YAML key maps to a field here.

Defaults describe a small model that trains on CPU; the YAML files in configs/ override them.
This module imports nothing from the rest of the package or megatron-core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# A GPU fast path: "auto" uses it when CUDA and the library it needs are present (never on
# CPU), "on" requires it (a clear error says what is missing), "off" never uses it. YAML
# true/false mean on/off.
Switch = Literal["auto", "on", "off"]


@dataclass
class CompeteSMoEConfig:
    """CompeteSMoE hyperparameters (see docs: alpha, beta, gamma, omega, A_max)."""

    rate: float = 0.07  # omega: per-layer probability of a competition step after warm-up
    warmup_fraction: float = 0.02  # no competition during this fraction of training steps
    max_compete_per_step: int = 2  # A_max: at most this many MoE layers compete in one step
    router_theta: float = 0.1  # alpha: weight of the winners term of the distillation loss
    router_loss_coef: float = 0.01  # beta: weight of the router distillation loss
    diversity_coef: float = 0.005  # gamma: cosine diversity among the K winners
    balance_coef: float = 0.01  # balance loss on the competition assignment
    gate_norm: str = "sum"  # "sum": s_i / sum s_j over winners; "sigmoid": sigmoid-normalised
    token_chunk: int = 0  # >0: compute competition affinities in chunks of this many tokens
    #                       (combine "winners" with gradient "dense": chunks of token_chunk x E
    #                       expert-side rows; gradient "winners": token_chunk rows of one expert
    #                       at a time, which bounds the memory of its scoring pass)
    # Competition combine (alltoall dispatcher): "winners" brings back the E affinities, then
    # only the K winners' outputs a token; "full" brings back all E outputs (allgather: always).
    combine: str = "winners"
    # Competition gradient: "winners" scores every candidate expert without a graph, then runs
    # the K winners again with gradient (the balance loss sees the losers' affinities as
    # constants); "dense" keeps every expert's graph (balance-loss gradient reaches the losers
    # too; costs E/K of a router step and holds [T, E, H]): for checking.
    gradient: str = "winners"
    # Top-M candidate competition (our extension): only the router's top-M experts of a token
    # compete (the others get affinity -inf: never win, weight 0 in the distillation target and
    # the balance loss). 0: all E experts compete (the paper). Needs gradient "winners".
    candidates: int = 0
    # Conventions where the authors' code (Fsoft-AIC/CompeteSMoE) and the paper's formulas can be
    # read two ways; defaults follow the authors' code (docs/competesmoe.md lists the places).
    # "matrix": mean of the K x K winner cosine matrix with a zero diagonal (theirs);
    # "pairs": mean over the K(K-1)/2 distinct pairs (= K/(K-1) x "matrix").
    diversity_average: str = "matrix"
    # Competition balance loss f_e: "top1" counts each token's top-1 winner only (theirs);
    # "all": all K winner slots, as megatron's router aux loss does.
    balance_count: str = "top1"


@dataclass
class MoEConfig:
    num_experts: int = 4  # E: experts in each MoE layer
    top_k: int = 2  # K: experts a token is routed to
    ffn_hidden_size: int = 128  # per-expert hidden size (moe_ffn_hidden_size)
    layer_freq: int = 1  # every n-th layer is MoE (1: all layers)
    router: str = "competesmoe"  # "competesmoe" or "topk" (megatron-core's native router)
    # router=topk only: "softmax" (top-K of softmax) or "sigmoid" (top-K of sigmoid scores,
    # weights renormalised over the K; DeepSeek-V3 style)
    score_function: str = "softmax"
    # router=topk with score_function=sigmoid only: aux-loss-free balancing, a per-expert bias
    # added to the scores for the choice only, nudged toward balance after every step
    expert_bias: bool = False
    expert_bias_update_rate: float = 1.0e-3  # step of that bias update (megatron's default)
    token_dispatcher: str = "alltoall"  # "alltoall" or "allgather"
    aux_loss_coeff: float = 0.01  # switch-style load balancing on router steps
    z_loss_coeff: Optional[float] = None  # router z-loss weight (None: off)
    capacity_factor: Optional[float] = None  # expert capacity x fair share; None: dropless
    pad_to_capacity: bool = False  # with a capacity factor: pad every expert to capacity
    grouped_gemm: Switch = "auto"  # grouped-GEMM experts (TE's); SequentialMLP otherwise
    competesmoe: CompeteSMoEConfig = field(default_factory=CompeteSMoEConfig)  # section


@dataclass
class ModelConfig:
    num_layers: int = 2  # transformer layers
    hidden_size: int = 64  # model width H
    num_attention_heads: int = 4  # attention heads
    num_query_groups: Optional[int] = None  # GQA key/value groups; None: = num_attention_heads
    ffn_hidden_size: int = 256  # MLP hidden size of the dense (non-MoE) layers
    seq_length: int = 128  # tokens a sample
    vocab_size: Optional[int] = None  # model vocabulary; None: the tokenizer's, padded
    make_vocab_size_divisible_by: int = 128  # vocabulary padding multiple (x TP)
    position_embedding_type: str = "rope"  # "rope" or "learned_absolute"
    rotary_base: int = 10000  # RoPE base
    untie_embeddings: bool = False  # separate output layer instead of the input embedding
    normalization: str = "RMSNorm"  # "RMSNorm" or "LayerNorm"
    activation: str = "swiglu"  # "swiglu" or "gelu"
    init_method_std: float = 0.02  # std of the normal initialisation
    layout_invariant_init: bool = True  # same weights for a seed whatever the parallel layout
    hidden_dropout: float = 0.0  # dropout after attention and MLP
    attention_dropout: float = 0.0  # dropout of the attention probabilities
    moe: MoEConfig = field(default_factory=MoEConfig)  # section

    @property
    def moe_layers(self) -> list[int]:
        """Layers i with i % moe.layer_freq == 0 are MoE (megatron's moe_layer_freq rule)."""
        return [i for i in range(self.num_layers) if i % self.moe.layer_freq == 0]

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)


@dataclass
class KernelsConfig:
    """GPU fast paths (see Switch). Resolved once per run by model/fast_paths.py, which logs
    what is on and why anything asked for is off."""

    transformer_engine: Switch = "auto"  # TE layer spec: fused linear+norm, fused attention
    permute_fusion: Switch = "auto"  # fused token (un)permutation in the dispatcher (TE >= 2.1)
    gradient_accumulation_fusion: Switch = "auto"  # wgrad GEMM accumulates into main_grad
    #                                                (TE linears, or Apex's kernel)
    bias_activation_fusion: Switch = "auto"  # fused SwiGLU / GeLU (megatron's jit fusions)
    bias_dropout_fusion: Switch = "auto"  # fused residual add + dropout
    masked_softmax_fusion: Switch = "auto"  # fused softmax of the local attention (its kernels)
    rope_fusion: Switch = "auto"  # TE's fused rotary embedding


@dataclass
class ParallelConfig:
    tensor: int = 1  # TP: tensor-parallel size
    pipeline: int = 1  # PP: pipeline stages
    virtual_pipeline: Optional[int] = None  # model chunks per pipeline rank (interleaved 1F1B)
    expert: int = 1  # EP: expert-parallel size
    expert_tensor: Optional[int] = None  # ETP: tensor-parallel size of experts; None: = tensor
    context: int = 1  # CP: context-parallel size
    sequence_parallel: bool = False  # SP: shard norms/dropout activations over TP
    distributed_optimizer: bool = False  # shard optimizer state over DP (ZeRO-1)
    # Overlap DP gradient reduce-scatter/all-reduce with the backward pass, and (distributed
    # optimizer) the parameter all-gather with the next forward pass (megatron's DDP options).
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    # Overlap the expert-parallel all-to-all with computation (megatron's combined 1F1B
    # schedule; router topk only: it splits the MoE layer into dispatch/compute/combine nodes,
    # which bypasses CompeteSMoE's competition path). Needs bf16 and EP > 1.
    moe_a2a_overlap: bool = False
    backend: str = "auto"  # "auto": nccl with CUDA, gloo without
    # A collective that waits longer than this (dead or hung peer) raises, so the job exits
    # instead of hanging until the scheduler kills it.
    collective_timeout_s: float = 600.0


@dataclass
class TrainConfig:
    global_batch_size: int = 8  # samples an optimizer step, over all DP ranks
    micro_batch_size: int = 2  # samples a forward/backward on one rank
    steps: Optional[int] = 100  # optimizer steps; or set `tokens`
    tokens: Optional[int] = None  # total training tokens (steps = tokens / (gbs * seq_length))
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # learning rate at the end of the decay
    lr_warmup_steps: int = 10  # linear warm-up (shortened for runs shorter than it)
    lr_decay: str = "cosine"  # "cosine", "linear" or "constant"
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    adam_beta1: float = 0.9  # Adam first-moment decay
    adam_beta2: float = 0.95  # Adam second-moment decay
    adam_eps: float = 1e-8  # Adam epsilon
    clip_grad: float = 1.0  # global gradient-norm clipping (0: off)
    precision: str = "fp32"  # "fp32", "bf16" or "fp16"
    seed: int = 1234  # weights, data order, dropout and competition schedule
    eval_interval: int = 50  # evaluate every n steps (0: no periodic evaluation)
    eval_iters: int = 4  # validation batches an evaluation
    on_nan: str = "stop"  # "stop" or "skip" when the loss or gradient is not finite
    exit_after_steps: Optional[int] = None  # save and exit after this many steps of this launch
    # Fault injection for tests: rank 0 writes NaN into a gradient at this step (1-based),
    # exercising the on_nan path for real. Leave null in experiments.
    debug_inject_nan_at_step: Optional[int] = None


@dataclass
class DataConfig:
    source: str = "default"  # "default" (embedded corpus), "indexed" (prefixes) or "mock"
    prefixes: list = field(default_factory=list)  # [prefix, ...] or [weight, prefix, ...]
    split: str = "969,30,1"  # train,valid,test weights
    tokenizer: Optional[str] = None  # SentencePiece tokenizer dir (from csmoe-tokenizer train)
    cache_dir: Optional[str] = None  # dataset index cache; default: <run.dir>/data_cache
    # Held-out sets: indexed-dataset prefixes (csmoe-tokenizer encode of other files, or
    # `python -m csmoe_megatron.data.split_files`), same tokenizer as training. With
    # valid_prefixes the periodic evaluation reads them instead of the split's valid part;
    # at the end of training every token of each set is evaluated once (loss, perplexity,
    # bits per byte) into metrics.jsonl, TensorBoard and <run.dir>/final_eval.json.
    valid_prefixes: list = field(default_factory=list)
    test_prefixes: list = field(default_factory=list)  # as valid_prefixes; only evaluated at the end


@dataclass
class LoggingConfig:
    interval: int = 1  # console / metrics.jsonl / TensorBoard every n steps
    tensorboard: bool = True  # TensorBoard events under <run.dir>/tb
    routing_images_interval: int = 0  # >0: expert-load / agreement heatmaps every n steps


@dataclass
class CheckpointConfig:
    save_interval: int = 0  # checkpoint every n steps (0: only at the end)
    resume: bool = True  # resume from <run.dir>/checkpoints/latest when present
    keep_last: int = 2  # older checkpoints are removed (only ones this run family wrote)
    save_at_end: bool = True  # a checkpoint after the last step
    # Start from these model weights (csmoe-import output, or a checkpoint/run dir of any
    # layout) with a fresh optimizer at step 0; unused when the run resumes its own checkpoint.
    init_from: Optional[str] = None


@dataclass
class RunConfig:
    dir: str = "runs/default"  # everything the run writes goes under this directory


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
