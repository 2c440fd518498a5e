"""A checkpoint of any parallel layout as one single-process model (TP=PP=EP=1), for the tools
that come after training (export, import, eval, generate).

megatron's dist-checkpointing stores every tensor under its global identity (layer, expert,
TP slice), so a model built on another layout loads it resharded: a TP=2 / PP=2 / EP=2
checkpoint loads into one process unchanged. Only the model state is read (never the optimizer),
every file is verified against the manifest first and read as data (no pickle: the common state
through torch.load(weights_only=True), see train/checkpoint_files.py).

A checkpoint is named by any of: a run directory (its checkpoints/latest), a checkpoints/ root
(its latest), or one iter_NNNNNNN/ (or an imported) checkpoint directory. Its config is the
config.yaml beside it (an imported checkpoint) or the run's config.yaml two levels up.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, load_config
from ..config.schema import ExperimentConfig

CONFIG_FILE = "config.yaml"
_REQUIRED = ("metadata.json", ".metadata", "common.pt")


@dataclass
class LoadedCheckpoint:
    path: Path  # the checkpoint directory the weights came from
    cfg: ExperimentConfig  # its config, parallel layout reset to one process
    model: torch.nn.Module  # the GPTModel (fp32 unless the run was bf16), eval mode
    vocab_size: int  # the model's (padded) vocabulary
    tokenizer_dir: Path | None  # the SentencePiece tokenizer saved with it, if any


def resolve_checkpoint(given: str | Path) -> Path:
    """The checkpoint directory `given` names; ConfigError saying what to pass otherwise."""
    from ..train.checkpoint import latest_checkpoint

    path = Path(given)
    if not path.is_dir():
        raise ConfigError(f"--checkpoint {path} is not a directory: pass a run directory, its "
                          f"checkpoints/ directory, or one checkpoint (iter_NNNNNNN)")
    if (path / "metadata.json").is_file():
        return path
    for root in (path / "checkpoints", path):
        if (root / "latest").is_file() or any(root.glob("iter_*")):
            found = latest_checkpoint(root)
            if found is not None:
                return found
    raise ConfigError(f"--checkpoint {path} holds no checkpoint (no metadata.json, no "
                      f"checkpoints/latest): pass a run directory that saved one, or an "
                      f"iter_NNNNNNN directory")


def checkpoint_config(ckpt: Path) -> ExperimentConfig:
    """The config the checkpoint was written with."""
    for candidate in (ckpt / CONFIG_FILE, ckpt.parent.parent / CONFIG_FILE):
        if candidate.is_file():
            return load_config(candidate)
    raise ConfigError(f"no {CONFIG_FILE} found for checkpoint {ckpt} (looked in it and in its "
                      f"run directory {ckpt.parent.parent}): copy the run's config.yaml there")


def verify_model_files(ckpt: Path) -> None:
    """Every file against the manifest (CRC-32, size) and the parsed files as data; a
    checkpoint without progress.json (imported, model only) is fine here."""
    from ..train import checkpoint_manifest as manifest
    from ..train.checkpoint_files import CheckpointError

    if manifest.is_legacy(ckpt):
        problems = [manifest.file_problem(ckpt, rel, None) for rel in _REQUIRED]
    else:
        entries = manifest.read_manifest(ckpt)
        lacking = [rel for rel in _REQUIRED if rel not in entries]
        if lacking:
            raise CheckpointError(f"{ckpt / manifest.MANIFEST} lists no {', '.join(lacking)}")
        problems = [manifest.file_problem(ckpt, rel, entries[rel]) for rel in sorted(entries)]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"checkpoint {ckpt} fails verification: {'; '.join(problems)}")


@contextlib.contextmanager
def single_process(seed: int = 1234):
    """A one-rank torch.distributed group and megatron's parallel state (TP=PP=EP=1) for the
    duration; reuses the caller's when one exists (tests that already set one up)."""
    import os

    import torch.distributed as dist
    from megatron.core import parallel_state

    from .. import compat
    from ..train.distributed import _free_port

    compat.quiet_expected_warnings()
    cpu = compat.install()
    created = not dist.is_initialized()
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    saved_env = {name: os.environ.get(name) for name in (*env, "MASTER_PORT")}
    if created:  # the env:// rendezvous of a one-rank group; put back afterwards (callers that
        # look at RANK/WORLD_SIZE, like csmoe-train's worker check, must not see it)
        os.environ.update(env, MASTER_PORT=str(_free_port()))
        dist.init_process_group("gloo" if cpu else "nccl")
    owns_state = not parallel_state.model_parallel_is_initialized()
    if owns_state:
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        parallel_state.initialize_model_parallel()
        model_parallel_cuda_manual_seed(seed, force_reset_rng=True)  # dropout streams (off)
    # megatron's process-wide MoE loss-logging tracker sizes its tensors by the first model's
    # layer count; a later model of another depth in this process would index past them.
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    get_moe_layer_wise_logging_tracker().clear()
    try:
        yield
    finally:
        get_moe_layer_wise_logging_tracker().clear()
        if owns_state:
            parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def one_process_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same model on TP=PP=EP=1 (weights are loaded, so no layout-invariant re-draw)."""
    one = copy.deepcopy(cfg)
    p = one.parallel
    p.tensor = p.pipeline = p.expert = p.context = 1
    p.virtual_pipeline = p.expert_tensor = None
    p.sequence_parallel = p.distributed_optimizer = p.moe_a2a_overlap = False
    p.overlap_grad_reduce = p.overlap_param_gather = False
    one.model.layout_invariant_init = False
    one.model.moe.grouped_gemm = "off"  # SequentialMLP: per-expert weights, as saved
    one.kernels.transformer_engine = "off"
    return one


def model_vocab_size(cfg: ExperimentConfig, tokenizer_dir: Path | None) -> int:
    """The vocabulary the run padded to (model.vocab_size, else the tokenizer's padded size;
    padding uses the run's TP size, so that comes from the saved config, not from TP=1)."""
    from ..model import padded_vocab_size

    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if tokenizer_dir is None:
        raise ConfigError("the checkpoint has no tokenizer/ and its config no model.vocab_size: "
                          "cannot size the vocabulary; copy the run's tokenizer/ into it")
    from csmoe_tokenizer.model import load_tokenizer

    return padded_vocab_size(load_tokenizer(tokenizer_dir).vocab_size, cfg)


def build_single_model(cfg: ExperimentConfig, vocab_size: int) -> torch.nn.Module:
    """The GPTModel of `cfg` in this process (call inside single_process())."""
    from .. import compat
    from ..config.megatron import transformer_config
    from ..model import build_model_chunks, fast_paths, unwrap

    one = one_process_config(cfg)
    tconfig = transformer_config(one, use_cpu=compat.is_installed(),
                                 fast_paths=fast_paths.resolve(one))
    model = unwrap(build_model_chunks(one, tconfig, vocab_size, use_te=False)[0])
    return model.eval()


def load_model_state(model: torch.nn.Module, ckpt: Path) -> None:
    """Load the model weights saved at `ckpt` (any layout; nested "model"/"model0.." keys of
    virtual-pipeline saves are global names too) into `model`."""
    from megatron.core import dist_checkpointing

    from ..train.checkpoint_files import SafeCommonLoadStrategy

    verify_model_files(ckpt)
    with warnings.catch_warnings():  # megatron 0.16's own torch deprecations, nothing to act on
        warnings.filterwarnings("ignore", category=FutureWarning)
        # Only the model is asked for: the optimizer state beside it is left unread.
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(ckpt),
                                         common_strategy=SafeCommonLoadStrategy(),
                                         strict="assume_ok_unexpected")
    model.load_state_dict(loaded["model"])


def tokenizer_dir_of(ckpt: Path) -> Path | None:
    for candidate in (ckpt / "tokenizer", ckpt.parent.parent / "tokenizer"):
        if (candidate / "tokenizer.model").is_file():
            return candidate
    return None


def load_checkpoint_model(given: str | Path) -> LoadedCheckpoint:
    """Resolve, verify and load a checkpoint into one process (inside single_process())."""
    ckpt = resolve_checkpoint(given)
    cfg = checkpoint_config(ckpt)
    tokenizer_dir = tokenizer_dir_of(ckpt)
    vocab = model_vocab_size(cfg, tokenizer_dir)
    model = build_single_model(cfg, vocab)
    load_model_state(model, ckpt)
    return LoadedCheckpoint(ckpt, one_process_config(cfg), model, vocab, tokenizer_dir)
