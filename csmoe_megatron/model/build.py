"""Assemble this rank's GPTModel chunk(s) from megatron-core pieces, on its device, in its
precision (as Megatron-LM's get_model: build, initialise, move to the GPU, wrap for bf16)."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import Float16Module

from ..config.schema import ExperimentConfig
from .init import init_layout_invariant
from .spec import decoder_block_spec


def padded_vocab_size(vocab_size: int, cfg: ExperimentConfig) -> int:
    """Pad so the embedding splits evenly over TP ranks (as Megatron-LM does)."""
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor
    return ((vocab_size + multiple - 1) // multiple) * multiple


def build_model_chunks(cfg: ExperimentConfig, tconfig, vocab_size: int,
                       use_te: bool = False) -> list[torch.nn.Module]:
    """One GPTModel per virtual pipeline stage held by this rank (one without interleaving);
    `use_te`: the Transformer Engine layer spec (model/fast_paths.py decides)."""
    vpp = cfg.parallel.virtual_pipeline or 1
    chunks = []
    for vp_stage in range(vpp):
        stage = vp_stage if cfg.parallel.virtual_pipeline else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        model = GPTModel(
            config=tconfig,
            transformer_layer_spec=decoder_block_spec(cfg, tconfig, vp_stage=stage,
                                                      use_te=use_te),
            vocab_size=vocab_size,
            max_sequence_length=cfg.model.seq_length,
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=not cfg.model.untie_embeddings,
            position_embedding_type=cfg.model.position_embedding_type,
            rotary_base=cfg.model.rotary_base,
            vp_stage=stage,
        )
        chunks.append(model)
    if cfg.model.layout_invariant_init:
        init_layout_invariant(chunks, cfg.train.seed, cfg.model.init_method_std, cfg.model.num_layers)
    if torch.cuda.is_available():
        # megatron creates most parameters on the current GPU, but not all (the router weight,
        # torch norms): move the whole chunk, as Megatron-LM does before wrapping it.
        for chunk in chunks:
            chunk.cuda(torch.cuda.current_device())
    if tconfig.bf16 or tconfig.fp16:
        # Every parameter and buffer in the model's precision; fp32 outputs on the last stage.
        chunks = [Float16Module(tconfig, chunk) for chunk in chunks]
    return chunks


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    from megatron.core.distributed import DistributedDataParallel

    while isinstance(chunk, (DistributedDataParallel, Float16Module)):
        chunk = chunk.module
    return chunk
