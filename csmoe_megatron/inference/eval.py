"""`csmoe-eval --checkpoint DIR (--text FILE | --prefix PREFIX)`: loss, perplexity, bits per
byte and the router's per-layer expert load of a checkpoint on a text.

One process, any saved layout (inference/load.py). The token stream is cut into windows of
model.seq_length that overlap by one token, so every token after the first is predicted exactly
once, with up to seq_length tokens of context. Routing is the router's alone (evaluation never
competes). Bits per byte = total loss in bits / UTF-8 bytes of the predicted text (the text less
its first token), which compares models with different tokenizers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from ..config.load import ConfigError
from ..version import add_version_argument
from .load import LoadedCheckpoint, load_checkpoint_model, single_process


def read_tokens(tokenizer, text_file: str | None, prefix: str | None) -> list[int]:
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise ConfigError(f"--text {path} is not a file")
        return tokenizer.encode(path.read_text(encoding="utf-8"))
    from csmoe_tokenizer.indexed import validate_indexed_prefix
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    validate_indexed_prefix(prefix, tokenizer.vocab_size)
    dataset = IndexedDataset(prefix)
    return [int(t) for i in range(len(dataset)) for t in dataset[i]]


class ExpertLoad:
    """Counts the routing map of every MoE layer's router (forward hooks)."""

    def __init__(self, model: torch.nn.Module):
        from megatron.core.transformer.moe.router import TopKRouter

        self.counts: dict[int, torch.Tensor] = {}
        self.handles = []
        routers = [m for m in model.modules() if isinstance(m, TopKRouter)]
        for index, router in enumerate(routers):
            self.handles.append(router.register_forward_hook(self._hook(index)))

    def _hook(self, index: int):
        def record(module, inputs, output):
            routing_map = output[1]
            count = routing_map.sum(dim=0).to(torch.float64)
            self.counts[index] = self.counts.get(index, 0) + count
        return record

    def fractions(self) -> dict[str, list[float]]:
        return {f"layer{i}": (c / c.sum()).tolist() for i, c in sorted(self.counts.items())}


@torch.no_grad()
def evaluate_tokens(loaded: LoadedCheckpoint, ids: list[int], tokenizer) -> dict:
    """Loss (nats/token), perplexity, bits per byte and expert load over the token stream."""
    if len(ids) < 2:
        raise ConfigError("the text has fewer than 2 tokens: nothing to predict")
    seq = loaded.cfg.model.seq_length
    load = ExpertLoad(loaded.model)
    total, count = 0.0, 0
    tokens = torch.tensor(ids, dtype=torch.long)
    device = next(loaded.model.parameters()).device
    for start in range(0, len(ids) - 1, seq):
        window = tokens[start:start + seq + 1].to(device)
        inputs, labels = window[:-1].unsqueeze(0), window[1:].unsqueeze(0)
        positions = torch.arange(inputs.shape[1], device=device).unsqueeze(0)
        per_token = loaded.model(inputs, positions, None, labels=labels)
        total += float(per_token.double().sum())
        count += labels.numel()
    for handle in load.handles:
        handle.remove()
    predicted_bytes = (len(tokenizer.decode(ids).encode("utf-8"))
                       - len(tokenizer.decode(ids[:1]).encode("utf-8")))
    loss = total / count
    return {"tokens": count, "bytes": predicted_bytes, "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_byte": total / math.log(2) / max(predicted_bytes, 1),
            "expert_load": load.fractions()}


def run_eval(checkpoint, text_file=None, prefix=None) -> dict:
    from csmoe_tokenizer.model import load_tokenizer

    with single_process():
        loaded = load_checkpoint_model(checkpoint)
        if loaded.tokenizer_dir is None:
            raise ConfigError(f"{loaded.path} has no tokenizer (a mock-data run): csmoe-eval "
                              f"needs the tokenizer the model was trained with")
        tokenizer = load_tokenizer(loaded.tokenizer_dir)
        ids = read_tokens(tokenizer, text_file, prefix)
        result = evaluate_tokens(loaded, ids, tokenizer)
    return {"checkpoint": str(loaded.path), **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="csmoe-eval", description=(
        "Loss, perplexity, bits per byte and per-layer expert load of a checkpoint on a text. "
        "Prints a summary, then one JSON line."))
    add_version_argument(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, its checkpoints/ directory, or one checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="a UTF-8 text file")
    source.add_argument("--prefix", help="an encoded dataset PREFIX (.bin/.idx, csmoe-tokenizer "
                                         "encode) made with the checkpoint's tokenizer")
    args = parser.parse_args(argv)
    from ..export.cli import run_reporting

    def act():
        result = run_eval(args.checkpoint, args.text, args.prefix)
        print(f"{result['checkpoint']}: {result['tokens']} tokens, loss {result['loss']:.4f}, "
              f"perplexity {result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits/byte")
        for layer, load in result["expert_load"].items():
            print(f"  {layer} expert load: " + " ".join(f"{x:.3f}" for x in load))
        print(json.dumps(result))

    return run_reporting(act)


if __name__ == "__main__":
    sys.exit(main())
