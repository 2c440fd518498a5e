"""`csmoe-generate --checkpoint DIR --prompt "..."`: text from a checkpoint, greedy (default) or
top-p sampling (--top-p, --temperature, --seed).

Decoding runs through transformers on a temporary export of the checkpoint (export/): its
MixtralForCausalLM computes the same logits as our model (tests/export check 1e-4 in fp32) and
brings an incremental KV cache, so each new token costs one token's forward, not the whole
prefix's. Needs the hf extra. Prompts are encoded with the checkpoint's own SentencePiece
tokenizer, without BOS (as the training documents are); generation stops at EOS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ..config.load import ConfigError
from ..version import add_version_argument


def hf_model_of(checkpoint):
    """(MixtralForCausalLM in eval mode, LoadedCheckpoint) of a checkpoint, via a temporary
    export directory (so transformers loads the same files csmoe-export writes)."""
    from transformers import MixtralForCausalLM
    from transformers.utils import logging as hf_logging

    from ..export.hf_export import hf_config, mixtral_state, require_hf, write_safetensors
    from .load import load_checkpoint_model, single_process

    require_hf("csmoe-generate")
    hf_logging.disable_progress_bar()  # the weights of a temporary file: no progress to show
    with single_process():
        loaded = load_checkpoint_model(checkpoint)
        tensors = mixtral_state(loaded)
    with tempfile.TemporaryDirectory(prefix="csmoe-generate-") as tmp:
        write_safetensors(tensors, Path(tmp), {"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config(loaded, "float32")))
        model = MixtralForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    return model.eval(), loaded


@torch.no_grad()
def generate_ids(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None,
                 top_p: float | None = None, temperature: float = 1.0,
                 seed: int = 1234) -> list[int]:
    """The new token ids (KV-cached decoding); greedy when top_p is None."""
    inputs = torch.tensor([prompt_ids], dtype=torch.long)
    sampling = {"do_sample": False}
    if top_p is not None:
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "top_p": top_p, "temperature": temperature, "top_k": 0}
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs),
                         max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=eos_id,
                         use_cache=True, **sampling)
    return out[0, len(prompt_ids):].tolist()


def generate(checkpoint, prompt: str, max_new_tokens: int = 64, top_p: float | None = None,
             temperature: float = 1.0, seed: int = 1234) -> dict:
    from csmoe_tokenizer.model import load_tokenizer

    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {temperature} (greedy: omit --top-p)")
    model, loaded = hf_model_of(checkpoint)
    if loaded.tokenizer_dir is None:
        raise ConfigError(f"{loaded.path} has no tokenizer (a mock-data run): csmoe-generate "
                          f"needs the tokenizer the model was trained with")
    tokenizer = load_tokenizer(loaded.tokenizer_dir)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise ConfigError("--prompt is empty: give at least one character")
    new = generate_ids(model, prompt_ids, max_new_tokens, tokenizer.eos_id, top_p, temperature,
                       seed)
    return {"checkpoint": str(loaded.path), "prompt_ids": prompt_ids, "new_ids": new,
            "completion": tokenizer.decode(new), "text": tokenizer.decode(prompt_ids + new)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="csmoe-generate", description=(
        "Generate text from a checkpoint: greedy, or top-p sampling with --top-p. Prints the "
        "prompt and its continuation. Needs the hf extra (decoding with a KV cache through "
        "transformers on a temporary export)."))
    add_version_argument(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, its checkpoints/ directory, or one checkpoint")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample from the smallest set of tokens holding this probability "
                             "(default: greedy)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling only")
    parser.add_argument("--seed", type=int, default=1234, help="sampling only")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    from ..export.cli import run_reporting

    def act():
        result = generate(args.checkpoint, args.prompt, args.max_new_tokens, args.top_p,
                          args.temperature, args.seed)
        print(json.dumps(result) if args.json else result["text"])

    return run_reporting(act)


if __name__ == "__main__":
    sys.exit(main())
