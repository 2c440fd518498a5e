"""Routing metrics of the CompeteSMoE layers (router and competition steps), kept on the device.

Layers record small detached sums per micro-batch (`record_router_step`,
`record_competition_step`) into this step's rows. The trainer, once per optimizer step,
`end_step(keep)`: keeps them (adds them to the interval's table) or drops them (a skipped
step); no host sync, no collective. At logging steps it reduces the table (one all-reduce of
one tensor, see train/moe_logging.py) and reads it with `metrics_from_table`:
  {"moe/layer{L}/...": float, "moe/competition_rate": float}, {L: tensor[E] load fractions}
L is the global 0-based MoE-layer index (see context.moe_layer_index). `pop_step_metrics()`
does all three at once (tests, tools).

Table: one row per MoE layer, [fields + E] float64, on the routing tensors' device. A layer
lives on one pipeline stage and every rank of that stage routes its own tokens (DP and the
sequence-parallel TP shards), so the sum over all ranks is the interval total for every layer.
Ratios only are reported, so TP without sequence parallelism (tokens counted once per TP rank)
is unaffected.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from ..device import current_device
from . import context

# Columns of a layer's row; the expert load follows them.
_COMPETED, _MICROBATCHES, _AGREE_EXACT, _AGREE_OVERLAP, _AGREE_TOKENS = range(5)
_AFF_SUM, _AFF_SQSUM, _AFF_COUNT = range(5, 8)
FIELDS = 8

_step: dict[int, torch.Tensor] = {}  # layer -> row of this optimizer step
_interval: dict[int, torch.Tensor] = {}  # layer -> rows summed over the kept steps
enabled = True  # the bench turns this off to time megatron-identical router steps


def _row(layer: int, num_experts: int, device: torch.device) -> torch.Tensor:
    row = _step.get(layer)
    if row is None:
        row = _step[layer] = torch.zeros(FIELDS + num_experts, dtype=torch.float64,
                                         device=device)
    return row


@torch.no_grad()
def record_router_step(layer: int, routing_map: torch.Tensor) -> None:
    if not enabled:
        return
    row = _row(layer, routing_map.shape[-1], routing_map.device)
    row[_MICROBATCHES] += 1
    row[FIELDS:] += routing_map.sum(dim=0).to(torch.float64)


@torch.no_grad()
def record_competition_step(layer: int, winners_mask: torch.Tensor, affinity: torch.Tensor,
                            agreement) -> None:
    """agreement: losses.RoutingAgreement (per-token means over this micro-batch)."""
    if not enabled:
        return
    num_tokens = winners_mask.shape[0]
    aff = affinity.detach().double()
    row = _row(layer, winners_mask.shape[-1], winners_mask.device)
    row[_COMPETED] += 1
    row[_MICROBATCHES] += 1
    row[_AGREE_EXACT] += agreement.exact_match.double() * num_tokens
    row[_AGREE_OVERLAP] += agreement.slot_overlap.double() * num_tokens
    row[_AGREE_TOKENS] += num_tokens
    scored = torch.isfinite(aff)  # top-M candidates: the others' affinity is -inf
    aff = aff.where(scored, torch.zeros_like(aff))
    row[_AFF_SUM] += aff.sum()
    row[_AFF_SQSUM] += aff.square().sum()
    row[_AFF_COUNT] += scored.sum()
    row[FIELDS:] += winners_mask.sum(dim=0).to(torch.float64)


def end_step(keep: bool = True) -> None:
    """Add this step's rows to the interval (keep) or drop them (a skipped step)."""
    if keep:
        for layer, row in _step.items():
            if layer in _interval:
                _interval[layer] += row
            else:
                _interval[layer] = row
    _step.clear()


def interval_table(num_layers: int, num_experts: int, device) -> torch.Tensor:
    """This rank's [num_layers, FIELDS + E] table of the interval (zeros for layers it does
    not hold), then a fresh interval. Every rank builds the same shape from the config."""
    table = torch.zeros(num_layers, FIELDS + num_experts, dtype=torch.float64, device=device)
    for layer, row in _interval.items():
        table[layer] = row
    _interval.clear()
    return table


def metrics_from_table(table: torch.Tensor) -> tuple[dict[str, float], dict[int, torch.Tensor]]:
    """A reduced table (on the host) -> (metrics, expert load fractions per layer)."""
    metrics: dict[str, float] = {}
    loads: dict[int, torch.Tensor] = {}
    rates = []
    for layer, row in enumerate(table):
        if row[_MICROBATCHES] == 0:
            continue  # this layer ran no training forward in the interval
        competed = float(row[_COMPETED] / row[_MICROBATCHES])
        rates.append(competed)
        key = f"moe/layer{layer}"
        metrics[f"{key}/competed"] = competed
        load = row[FIELDS:]
        fractions = load / load.sum().clamp_min(1.0)
        loads[layer] = fractions.float()
        metrics[f"{key}/load_max"] = float(fractions.max())
        metrics[f"{key}/load_min"] = float(fractions.min())
        if row[_COMPETED] > 0 and row[_AGREE_TOKENS] > 0:
            metrics[f"{key}/agreement"] = float(row[_AGREE_EXACT] / row[_AGREE_TOKENS])
            metrics[f"{key}/agreement_overlap"] = float(row[_AGREE_OVERLAP] / row[_AGREE_TOKENS])
            mean = row[_AFF_SUM] / row[_AFF_COUNT]
            var = (row[_AFF_SQSUM] / row[_AFF_COUNT] - mean * mean).clamp_min(0.0)
            metrics[f"{key}/affinity_mean"] = float(mean)
            metrics[f"{key}/affinity_std"] = float(var.sqrt())
    if rates:
        metrics["moe/competition_rate"] = sum(rates) / len(rates)
    return metrics, loads


_last_load: dict[int, torch.Tensor] = {}


def pop_step_metrics(num_layers: Optional[int] = None,
                     num_experts: Optional[int] = None) -> dict[str, float]:
    """end_step + reduce over the default group + read: a collective, all ranks call it.
    Sizes come from the arguments, the configured run (context) or the recorded rows (then
    every rank must have recorded some)."""
    end_step(keep=True)
    num_layers = num_layers or context.configured_num_moe_layers() or \
        max(_interval, default=-1) + 1
    if num_experts is None:
        num_experts = max((r.numel() - FIELDS for r in _interval.values()), default=0)
    device = next((r.device for r in _interval.values()), None) or current_device()
    table = interval_table(num_layers, num_experts, device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(table)
    metrics, loads = metrics_from_table(table.cpu())
    _last_load.clear()
    _last_load.update(loads)
    return metrics


def pop_expert_load() -> dict[int, torch.Tensor]:
    """Token fractions per expert of each layer, from the last pop_step_metrics."""
    load = dict(_last_load)
    _last_load.clear()
    return load


def reset() -> None:
    _step.clear()
    _interval.clear()
    _last_load.clear()
