"""Checks of what a run reads and where it writes, before anything is touched: the tokenizer
(exists, loads, its vocabulary fits model.vocab_size), every data prefix (PREFIX.bin and
PREFIX.idx exist and agree, token ids fit their dtype), the tokenizer and the parallel layout of
the checkpoint a run would resume, the run and cache directories (can be created or written). Reads only; writes
nothing, builds no cache. Each failure is one ConfigError naming the key, the file and the fix."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from .load import ConfigError
from .schema import ExperimentConfig


def tokenizer_vocab_size(cfg: ExperimentConfig) -> int | None:
    """The tokenizer's vocabulary for data.source default/indexed (mock: None). The default
    corpus' size is a constant, so it is known before the corpus is prepared."""
    if cfg.data.source == "default":
        return _default_corpus_module().DEFAULT_VOCAB_SIZE
    if cfg.data.source != "indexed":
        return None
    from csmoe_tokenizer import TokenizerUserError, load_tokenizer

    try:
        return load_tokenizer(cfg.data.tokenizer).vocab_size
    except TokenizerUserError as e:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer}: {e}") from None


def _default_corpus_module():
    """data/default_corpus.py itself imports only the standard library, but importing it by
    name runs data/__init__.py, which imports megatron-core (seconds): a check must be quick."""
    loaded = sys.modules.get("csmoe_megatron.data.default_corpus")
    if loaded is not None:
        return loaded
    path = Path(__file__).resolve().parents[1] / "data" / "default_corpus.py"
    spec = importlib.util.spec_from_file_location("_csmoe_default_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_inputs(cfg: ExperimentConfig, world_size: int | None = None) -> None:
    """ConfigError on the first input the run could not read or output it could not write.
    With `world_size`, also a resume the checkpoint's parallel layout cannot follow."""
    vocab = tokenizer_vocab_size(cfg)
    if vocab is not None and cfg.model.vocab_size is not None and cfg.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the "
                          f"tokenizer's vocabulary ({vocab}); remove model.vocab_size (set it to "
                          f"null) to size it from the tokenizer")
    if cfg.data.source == "indexed":
        _check_prefixes(cfg.data.prefixes, vocab)
        _check_resume_tokenizer(cfg)
    if world_size is not None:
        _check_resume_layout(cfg, world_size)
    if cfg.checkpoint.init_from and not Path(cfg.checkpoint.init_from).is_dir():
        raise ConfigError(f"checkpoint.init_from={cfg.checkpoint.init_from} is not a directory: "
                          f"give a csmoe-import output, a checkpoint or a run directory")
    for key in ("valid_prefixes", "test_prefixes"):
        _check_heldout_prefixes(f"data.{key}", getattr(cfg.data, key), vocab)
    _check_writable("run.dir", Path(cfg.run.dir))
    checkpoints = Path(cfg.run.dir) / "checkpoints"
    if checkpoints.exists():
        _check_writable("the checkpoint directory", checkpoints)
    if cfg.data.cache_dir:
        _check_writable("data.cache_dir", Path(cfg.data.cache_dir))


def _check_prefixes(prefixes: list, vocab: int | None) -> None:
    from csmoe_tokenizer import TokenizerUserError, validate_indexed_prefix

    if all(isinstance(p, str) for p in prefixes):
        paths = prefixes
    elif len(prefixes) % 2 == 0 and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                        for w in prefixes[0::2]):
        paths = prefixes[1::2]
        if any(w < 0 for w in prefixes[0::2]) or sum(prefixes[0::2]) <= 0:
            raise ConfigError(f"data.prefixes: blend weights must be >= 0 with a positive sum, "
                              f"got {prefixes[0::2]}")
    else:
        raise ConfigError(f"data.prefixes must be [prefix, ...] or [weight, prefix, weight, "
                          f"prefix, ...], got {prefixes!r}")
    for prefix in paths:
        try:
            validate_indexed_prefix(str(prefix), vocab_size=vocab)
        except TokenizerUserError as e:
            raise ConfigError(f"data.prefixes: {e}") from None


def _check_heldout_prefixes(key: str, prefixes: list, vocab: int | None) -> None:
    """Held-out sets: plain prefixes (no blend weights: every token is evaluated once)."""
    from csmoe_tokenizer import TokenizerUserError, validate_indexed_prefix

    if not all(isinstance(p, str) and p for p in prefixes):
        raise ConfigError(f"{key} must be a list of indexed-dataset prefixes (PREFIX for "
                          f"PREFIX.bin/PREFIX.idx, no weights), got {prefixes!r}")
    for prefix in prefixes:
        try:
            validate_indexed_prefix(prefix, vocab_size=vocab)
        except TokenizerUserError as e:
            raise ConfigError(f"{key}: {e}") from None


def _check_resume_tokenizer(cfg: ExperimentConfig) -> None:
    """Resuming `latest` with another tokenizer is refused by the trainer after it has written
    the run's config; refuse it here first. Anything unreadable is left to the resume logic."""
    checkpoints = Path(cfg.run.dir) / "checkpoints"
    try:
        name = (checkpoints / "latest").read_text().strip()
        saved = json.loads((checkpoints / name / "tokenizer" / "tokenizer.json").read_text())
        given = json.loads((Path(cfg.data.tokenizer) / "tokenizer.json").read_text())
    except (OSError, ValueError):  # no checkpoint yet, or one the resume logic reports on
        return
    if not cfg.checkpoint.resume or not isinstance(saved, dict) or not isinstance(given, dict):
        return
    recorded, current = saved.get("model_sha256"), given.get("model_sha256")
    if recorded and current and recorded != current:
        raise ConfigError(f"the checkpoint {checkpoints / name} was trained with a different "
                          f"tokenizer (model sha256 {recorded}) than data.tokenizer="
                          f"{cfg.data.tokenizer} ({current}); use the tokenizer saved in "
                          f"{checkpoints / name / 'tokenizer'}, set checkpoint.resume=false or "
                          f"start a new run.dir")


def _check_resume_layout(cfg: ExperimentConfig, world_size: int) -> None:
    """A resume of `latest` on a layout it cannot follow (train/layout.py), refused before
    anything is written; the trainer checks the checkpoint it actually loads again."""
    from ..train.layout import current_layout, legacy_world_size, refusal

    checkpoints = Path(cfg.run.dir) / "checkpoints"
    try:
        name = (checkpoints / "latest").read_text().strip()
        doc = json.loads((checkpoints / name / "progress.json").read_text())
    except (OSError, ValueError):  # no checkpoint yet, or one the resume logic reports on
        return
    progress = doc.get("progress") if isinstance(doc, dict) else None
    if not cfg.checkpoint.resume or not isinstance(progress, dict) \
            or not isinstance(progress.get("layout", {}), dict):
        return
    saved = progress.get("layout")
    problem = refusal(saved, current_layout(cfg, world_size), checkpoints / name,
                      legacy_world_size(checkpoints / name, progress))
    if problem:
        raise ConfigError(problem)


def _check_writable(key: str, path: Path) -> None:
    """`path` is a directory we can write, or can be created: its nearest existing ancestor
    is a writable directory."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={path} exists and is not a directory; choose another {key}")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: cannot write under {probe} (permission denied); "
                          f"choose a {key} you can write")
