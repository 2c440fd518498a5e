"""Resolve the config's data section into a tokenizer and train/valid/test datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.distributed as dist

from ..config.load import ConfigError
from ..config.schema import ExperimentConfig
from ..data import MockTokenizer, build_datasets, parse_blend


def resolve_tokenizer_and_prefixes(cfg: ExperimentConfig, say=print):
    """(tokenizer, prefixes, tokenizer_dir or None) for the configured source."""
    source = cfg.data.source
    if source == "mock":
        return MockTokenizer(vocab_size=cfg.model.vocab_size), None, None
    from csmoe_tokenizer import load_tokenizer

    if source == "default":
        from ..data.default_corpus import default_corpus_info, prepare_default_corpus

        if default_corpus_info() is None:
            say("preparing the default corpus (Python standard-library docstrings: tokenizer "
                "training and encoding; first run only, cached)")
        corpus = prepare_default_corpus()  # cached; a file lock makes one rank build it
        return load_tokenizer(corpus.tokenizer_dir), [corpus.prefix], Path(corpus.tokenizer_dir)
    from csmoe_tokenizer import validate_indexed_prefix

    tok = load_tokenizer(cfg.data.tokenizer)
    try:
        paths, _ = parse_blend(cfg.data.prefixes)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for prefix in paths:
        validate_indexed_prefix(prefix, vocab_size=tok.vocab_size)
    return tok, cfg.data.prefixes, Path(cfg.data.tokenizer)


def build_run_datasets(cfg: ExperimentConfig, tokenizer, prefixes, total_steps: int, run_dir: Path):
    t = cfg.train
    evals = (total_steps // t.eval_interval + 1) if t.eval_interval > 0 else 1
    counts = (total_steps * t.global_batch_size,
              evals * t.eval_iters * t.global_batch_size,
              t.eval_iters * t.global_batch_size)
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "data_cache"
    return build_datasets(cfg, tokenizer, counts, cache, prefixes)


def copy_tokenizer_to_run(tokenizer_dir: Path | None, run_dir: Path) -> None:
    """The tokenizer travels with the run's outputs (and so with its checkpoints)."""
    if tokenizer_dir is None or dist.get_rank() != 0:
        return
    dest = run_dir / "tokenizer"
    if not dest.exists():
        tmp = run_dir / "tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(tokenizer_dir, tmp)
        tmp.replace(dest)


def check_tokenizer_matches_checkpoint(tokenizer, checkpoint: Path) -> None:
    """Resuming with another tokenizer would silently retrain embeddings on renumbered tokens
    (or fail deep inside checkpoint loading when the vocabulary size differs): refuse clearly."""
    saved = checkpoint / "tokenizer" / "tokenizer.json"
    ids = getattr(tokenizer, "unique_identifiers", {})
    if not saved.is_file() or "model_sha256" not in ids:
        return
    import json

    recorded = json.loads(saved.read_text()).get("model_sha256")
    if recorded != ids["model_sha256"]:
        raise ConfigError(f"the checkpoint {checkpoint} was trained with a different tokenizer "
                          f"(model sha256 {recorded}) than data.tokenizer now gives "
                          f"({ids['model_sha256']}); use the tokenizer saved in "
                          f"{checkpoint / 'tokenizer'} or start a new run.dir")
