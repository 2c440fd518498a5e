"""`checkpoint.init_from`: start a run from another checkpoint's model weights (an imported
Hugging Face model, or any checkpoint of ours on any layout), with a fresh optimizer, learning
rate schedule and data order from step 0.

Kept apart from checkpoint.py (resume restores everything; this restores the model only).
Used only when the run has no checkpoint of its own to resume: a restarted job resumes its own.
The files are verified against the manifest and read as data (inference/load.py), then loaded
through dist-checkpointing, which reshards the weights onto this run's TP/PP/EP layout.
"""

from __future__ import annotations

from pathlib import Path

from megatron.core import dist_checkpointing

from ..config.load import ConfigError
from ..config.schema import ExperimentConfig
from ..model import unwrap
from .checkpoint import _model_state
from .checkpoint_files import SafeCommonLoadStrategy

# The model fields that must agree for the weights to mean the same thing here.
_ARCHITECTURE = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                 "ffn_hidden_size", "position_embedding_type", "untie_embeddings",
                 "normalization", "activation", "moe.num_experts", "moe.ffn_hidden_size",
                 "moe.layer_freq")


def _field(model_cfg, dotted: str):
    value = model_cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def architecture_differences(saved: ExperimentConfig, cfg: ExperimentConfig) -> list[str]:
    return [f"model.{key}: {_field(saved.model, key)!r} there, {_field(cfg.model, key)!r} here"
            for key in _ARCHITECTURE if _field(saved.model, key) != _field(cfg.model, key)]


def init_from_checkpoint(given: str, model_chunks, optimizer, cfg: ExperimentConfig,
                         vocab_size: int) -> Path:
    """Collective (every rank). Loads the model weights of `given` into this run's chunks."""
    from ..inference.load import (checkpoint_config, model_vocab_size, resolve_checkpoint,
                                  tokenizer_dir_of, verify_model_files)

    ckpt = resolve_checkpoint(given)
    saved = checkpoint_config(ckpt)
    problems = architecture_differences(saved, cfg)
    saved_vocab = model_vocab_size(saved, tokenizer_dir_of(ckpt))
    if saved_vocab != vocab_size:
        problems.append(f"vocabulary {saved_vocab} there, {vocab_size} here (set "
                        f"model.vocab_size={saved_vocab} and use the checkpoint's tokenizer)")
    if problems:
        raise ConfigError(f"checkpoint.init_from={given} holds another model: "
                          + "; ".join(problems) + ". Fix the model section to match it")
    verify_model_files(ckpt)
    loaded = dist_checkpointing.load(_model_state(model_chunks), str(ckpt),
                                     common_strategy=SafeCommonLoadStrategy())
    if len(model_chunks) == 1:
        unwrap(model_chunks[0]).load_state_dict(loaded["model"])
    else:
        for i, chunk in enumerate(model_chunks):
            unwrap(chunk).load_state_dict(loaded[f"model{i}"])
    optimizer.reload_model_params()  # fp32 main copies (bf16, distributed optimizer) follow
    return ckpt
