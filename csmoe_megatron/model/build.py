"""Assemble this rank's GPTModel chunk(s) from megatron-core pieces."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from ..config.schema import ExperimentConfig
from .init import init_layout_invariant
from .spec import decoder_block_spec


def padded_vocab_size(vocab_size: int, cfg: ExperimentConfig) -> int:
    """Pad so the embedding splits evenly over TP ranks (as Megatron-LM does)."""
    multiple = cfg.model.make_vocab_size_divisible_by * cfg.parallel.tensor
    return ((vocab_size + multiple - 1) // multiple) * multiple


def build_model_chunks(cfg: ExperimentConfig, tconfig, vocab_size: int) -> list[torch.nn.Module]:
    """One GPTModel per virtual pipeline stage held by this rank (one without interleaving)."""
    vpp = cfg.parallel.virtual_pipeline or 1
    chunks = []
    for vp_stage in range(vpp):
        stage = vp_stage if cfg.parallel.virtual_pipeline else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        model = GPTModel(
            config=tconfig,
            transformer_layer_spec=decoder_block_spec(cfg, tconfig, vp_stage=stage),
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
    return chunks
