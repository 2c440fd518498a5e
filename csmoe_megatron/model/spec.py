"""Layer specs: megatron-core's GPT decoder spec, with our choices plugged in.

* Transformer Engine spec when the run's fast paths say so (model/fast_paths.py: CUDA and TE
  present, kernels.transformer_engine not off); the local (plain torch) spec otherwise.
* Local spec: norms replaced by SequenceParallelTorchNorm (megatron's torch norm refuses SP).
* moe.router == "competesmoe": the MoE layers' module is the CompeteSMoE layer (a MoELayer
  subclass); "topk" keeps megatron-core's own MoELayer and router as the baseline.
"""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.moe.moe_layer import MoELayer

from ..config.schema import ExperimentConfig
from .norm import SequenceParallelTorchNorm


def decoder_block_spec(cfg: ExperimentConfig, tconfig, vp_stage=None, pp_rank=None,
                       use_te: bool = False):
    block = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=use_te,
                                       normalization=cfg.model.normalization,
                                       vp_stage=vp_stage, pp_rank=pp_rank)
    block = copy.deepcopy(block)  # megatron shares one spec object between layers
    if not use_te:
        block.layer_norm = SequenceParallelTorchNorm
    for layer in block.layer_specs:
        sub = layer.submodules
        if not use_te:
            sub.input_layernorm = SequenceParallelTorchNorm
            sub.pre_mlp_layernorm = SequenceParallelTorchNorm
        if getattr(sub.mlp, "module", None) is MoELayer and cfg.model.moe.router == "competesmoe":
            from ..moe.layer import CompeteSMoELayer

            sub.mlp.module = CompeteSMoELayer
            # The layer's CompeteSMoE hyperparameters travel as a ModuleSpec param.
            sub.mlp.params = {**(sub.mlp.params or {}), "competesmoe": cfg.model.moe.competesmoe}
    return block
