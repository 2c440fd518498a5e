"""`csmoe-import hf`: a transformers Mixtral directory -> a model checkpoint of ours.

The output is a model-only checkpoint (megatron dist-checkpointing, written from one process;
any layout loads it): metadata.json, .metadata, *.distcp, common.pt, the config it was imported
with (config.yaml), the tokenizer when the Mixtral directory has our SentencePiece
tokenizer.model, and manifest.json (CRC-32 of every file). Training starts from it with
`checkpoint.init_from=CKPT` (weights only: a fresh optimizer, step 0); eval, generate and
export read it like any checkpoint. Nothing is written before every check passed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..config import load_config, save_config
from ..config.load import ConfigError
from ..config.megatron import transformer_config
from ..inference.load import CONFIG_FILE, build_single_model, one_process_config, single_process
from . import mixtral_map
from .hf_export import INDEX, check_output, require_hf


def read_mixtral(model_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, every tensor) of a Mixtral directory, read with safetensors (data only)."""
    from safetensors.torch import load_file

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"--model {model_dir} has no config.json: pass a transformers model "
                          f"directory (as written by csmoe-export hf or save_pretrained)")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "mixtral":
        raise ConfigError(f"--model {model_dir} is a {config.get('model_type')!r} model; only "
                          f"transformers' Mixtral (model_type mixtral) imports")
    if (model_dir / INDEX).is_file():
        files = sorted(set(json.loads((model_dir / INDEX).read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    missing = [f for f in files if not (model_dir / f).is_file()]
    if missing:
        raise ConfigError(f"--model {model_dir} lacks {', '.join(missing)} (only safetensors "
                          f"weights import, never pickled .bin files)")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(model_dir / name)))
    return config, tensors


def _tokenizer_into(model_dir: Path, output: Path) -> bool:
    """Our tokenizer directory from the export's tokenizer.model (metadata recomputed)."""
    model_file = model_dir / "tokenizer.model"
    if not model_file.is_file():
        return False
    import sentencepiece

    from csmoe_tokenizer.metadata import FORMAT, METADATA_FILE, metadata_json, sha256_of

    proto = model_file.read_bytes()
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    dest = output / "tokenizer"
    dest.mkdir()
    (dest / "tokenizer.model").write_bytes(proto)
    (dest / METADATA_FILE).write_bytes(metadata_json({
        "format": FORMAT, "model_sha256": sha256_of(proto), "vocab_size": sp.vocab_size(),
        "special_ids": {"pad": sp.pad_id(), "unk": sp.unk_id(), "bos": sp.bos_id(),
                        "eos": sp.eos_id()},
        "imported_from": str(model_dir)}))
    return True


def import_hf(model_dir: str | Path, config: str | Path, output: str | Path, say=print) -> Path:
    require_hf("csmoe-import hf")
    from megatron.core import dist_checkpointing

    from ..train import checkpoint_manifest

    model_dir, output = Path(model_dir), Path(output)
    cfg = load_config(config)
    check_output(output)
    hf_config, hf_tensors = read_mixtral(model_dir)
    vocab = int(hf_config.get("vocab_size", 0))
    if cfg.model.vocab_size not in (None, vocab):
        raise ConfigError(f"config model.vocab_size={cfg.model.vocab_size} but the Mixtral "
                          f"model has vocab_size={vocab}: set model.vocab_size={vocab}")
    cfg.model.vocab_size = vocab  # the checkpoint's vocabulary, padded as exported
    tconfig = transformer_config(one_process_config(cfg), use_cpu=True)
    problems = mixtral_map.unsupported_features(cfg, tconfig)
    problems += mixtral_map.config_agreement(hf_config, cfg, vocab, tconfig.layernorm_epsilon)
    if problems:
        raise ConfigError(f"--config {config} does not describe the model in {model_dir}: "
                          + "; ".join(problems) + ". Fix the config's model section")
    with single_process(cfg.train.seed):
        model = build_single_model(cfg, vocab)
        ours = mixtral_map.mixtral_to_megatron(hf_tensors, cfg)
        state = model.state_dict()
        shapes = [f"{k}: {tuple(v.shape)} vs {tuple(state[k].shape)}" for k, v in ours.items()
                  if k not in state or v.shape != state[k].shape]
        if shapes:
            raise ConfigError(f"tensor shapes differ from the config's model: {shapes[:4]}")
        with torch.no_grad():
            for name, tensor in ours.items():
                state[name].copy_(tensor)  # state_dict tensors share the parameters' storage
        partial = output.with_name(output.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        dist_checkpointing.save({"model": model.sharded_state_dict()}, str(partial))
    save_config(cfg, partial / CONFIG_FILE)
    has_tokenizer = _tokenizer_into(model_dir, partial)
    checkpoint_manifest.write_manifest(partial)
    if output.exists():
        output.rmdir()
    partial.rename(output)
    what = "model weights and tokenizer" if has_tokenizer else "model weights"
    say(f"imported {model_dir} into {output} ({what}); train from it with "
        f"checkpoint.init_from={output}")
    return output
