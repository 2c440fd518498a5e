"""Run-wide step context: which MoE layer runs a competition step now (spec §4).

Contract with the trainer:
  configure_run(seed, total_steps, num_moe_layers)  once at start (same values on every rank)
  set_step(step)                                    before each optimizer step's forward-backward;
                                                    all micro-batches of the step see that step
The layers ask `competes(moe_layer_index, cs_cfg)`. The answer is a pure function of
(seed, step, layer, hyperparameters) via CompetitionSchedule, so every rank of every
tensor/expert/pipeline group takes the same branch without communication.

Layer indices are global MoE-layer indices (0-based, counting only MoE layers, across all
pipeline and virtual-pipeline stages), derived from megatron's global `layer_number` and the
`moe_layer_freq` pattern by `moe_layer_index`.

The CompeteSMoE hyperparameters (rate, warm-up, A_max) live with the layers (ModuleSpec params
from model/spec.py); the context only holds the run facts, and caches one schedule per distinct
hyperparameter set. Before configure_run, training forwards are router steps only (a layer used
outside the trainer: tests, probes); `force_competition` overrides the schedule (tests, bench).
Evaluation (module.training False) never competes; the layer checks that itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schedule import CompetitionSchedule


@dataclass
class _RunState:
    seed: Optional[int] = None
    total_steps: Optional[int] = None
    num_moe_layers: Optional[int] = None
    step: Optional[int] = None
    forced: Optional[bool | frozenset] = None


_STATE = _RunState()
_SCHEDULES: dict[tuple, CompetitionSchedule] = {}


def configure_run(seed: int, total_steps: int, num_moe_layers: int) -> None:
    """Fix the run facts every rank must agree on; resets the step."""
    if num_moe_layers < 0 or total_steps < 0:
        raise ValueError("total_steps and num_moe_layers must be >= 0")
    _STATE.seed, _STATE.total_steps = int(seed), int(total_steps)
    _STATE.num_moe_layers, _STATE.step = int(num_moe_layers), None
    _SCHEDULES.clear()


def set_step(step: int) -> None:
    """The 0-based optimizer step whose micro-batches run next."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    _STATE.step = int(step)


def current_step() -> Optional[int]:
    return _STATE.step


def configured_num_moe_layers() -> Optional[int]:
    return _STATE.num_moe_layers


def is_configured() -> bool:
    return _STATE.seed is not None


def force_competition(value) -> None:
    """True: every training forward competes; False: none does; None: follow the schedule;
    a collection of steps: every MoE layer competes at exactly those steps (checks, tests)."""
    _STATE.forced = value if value is None or isinstance(value, bool) else frozenset(value)


def reset() -> None:
    """Forget everything (tests)."""
    global _STATE
    _STATE = _RunState()
    _SCHEDULES.clear()


def schedule(cs_cfg) -> CompetitionSchedule:
    """The run's schedule for these CompeteSMoE hyperparameters (cached)."""
    if not is_configured():
        raise RuntimeError("csmoe_megatron.moe.context.configure_run was not called")
    key = (_STATE.seed, _STATE.num_moe_layers, _STATE.total_steps, cs_cfg.rate,
           cs_cfg.warmup_fraction, cs_cfg.max_compete_per_step)
    if key not in _SCHEDULES:
        _SCHEDULES[key] = CompetitionSchedule(*key)
    return _SCHEDULES[key]


def competes(moe_layer_index: int, cs_cfg) -> bool:
    """Whether this (global) MoE layer runs a competition step at the current step."""
    if isinstance(_STATE.forced, bool):
        return _STATE.forced
    if _STATE.forced is not None:
        return _STATE.step in _STATE.forced
    if not is_configured():
        return False
    if _STATE.step is None:
        raise RuntimeError("training forward before csmoe_megatron.moe.context.set_step(step)")
    return schedule(cs_cfg).competes(_STATE.step, moe_layer_index)


def moe_layer_pattern(config) -> list[int]:
    """1 for MoE layers, 0 for dense ones, over all decoder layers (megatron's rule)."""
    freq = config.moe_layer_freq
    if isinstance(freq, int):
        return [1 if i % freq == 0 else 0 for i in range(config.num_layers)]
    return list(freq)


def moe_layer_index(config, layer_number: int) -> int:
    """Global 0-based MoE-layer index of the decoder layer with megatron's global 1-based
    `layer_number` (TransformerLayer adds the pipeline/virtual-stage offset before calling
    set_layer_number)."""
    pattern = moe_layer_pattern(config)
    if not 1 <= layer_number <= len(pattern) or pattern[layer_number - 1] != 1:
        raise ValueError(f"layer_number {layer_number} is not an MoE layer of pattern {pattern}")
    return sum(pattern[: layer_number - 1])


def num_moe_layers(config) -> int:
    return sum(moe_layer_pattern(config))
