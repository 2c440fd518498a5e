"""`csmoe-export hf`: a checkpoint of any layout -> a transformers MixtralForCausalLM directory
(config.json, generation_config.json, model*.safetensors, the tokenizer).

The checkpoint is loaded into one process (inference/load.py reshards it), renamed by
mixtral_map, and written with safetensors (data only, no pickle). Written into OUT.partial and
renamed at the end: an interrupted export leaves no directory that looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..config.load import ConfigError
from ..inference.load import LoadedCheckpoint, load_checkpoint_model, single_process
from . import mixtral_map
from .hf_tokenizer import special_ids, write_hf_tokenizer

SHARD_BYTES = 2 * 2**30  # safetensors shards of at most this size (the Hub's usual 2 GB-ish)
INDEX = "model.safetensors.index.json"


def require_hf(tool: str) -> None:
    try:
        import safetensors  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"{tool} needs transformers and safetensors ({error}): install the "
                          f"hf extra, `pip install 'csmoe-megatron[hf]'`") from None


def check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not empty: choose a new directory "
                          f"or remove it")


def mixtral_state(loaded: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    """The loaded model as Mixtral tensors (refusing what Mixtral cannot express)."""
    mixtral_map.check_exportable(loaded.cfg, loaded.model.config)
    state = {k: v for k, v in loaded.model.state_dict().items() if isinstance(v, torch.Tensor)}
    return mixtral_map.megatron_to_mixtral(state, loaded.cfg)


def hf_config(loaded: LoadedCheckpoint, dtype: str) -> dict:
    return mixtral_map.mixtral_config(loaded.cfg, loaded.model.config, loaded.vocab_size,
                                      special_ids(loaded.tokenizer_dir), dtype)


def write_safetensors(tensors: dict[str, torch.Tensor], output: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(output / "model.safetensors"), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(output / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (output / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                            "weight_map": weight_map}, indent=2) + "\n")


def export_hf(checkpoint: str | Path, output: str | Path, say=print) -> Path:
    require_hf("csmoe-export hf")
    output = Path(output)
    check_output(output)
    with single_process():
        loaded = load_checkpoint_model(checkpoint)
        tensors = mixtral_state(loaded)
    dtype = "bfloat16" if loaded.cfg.train.precision == "bf16" else "float32"
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_safetensors(tensors, partial, {"format": "pt"})
    config = hf_config(loaded, dtype)
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if k in config}
    (partial / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    if loaded.tokenizer_dir is not None:
        write_hf_tokenizer(loaded.tokenizer_dir, partial)
    else:
        say(f"note: {loaded.path} has no tokenizer (mock-data run): the export has none")
    if output.exists():
        output.rmdir()  # empty (check_output)
    partial.rename(output)
    say(f"exported {loaded.path} to {output} (transformers MixtralForCausalLM, "
        f"{sum(t.numel() for t in tensors.values()) / 1e6:.2f}M parameters, {dtype})")
    return output
