"""Per-step routing metrics of the CompeteSMoE layers (router and competition steps).

Layers record small detached sums per micro-batch (`record_router_step`,
`record_competition_step`); the trainer calls, once per optimizer step after forward-backward
and on every rank (it is a collective):
  pop_step_metrics() -> {"moe/layer{L}/...": float, "moe/competition_rate": float}
  pop_expert_load()  -> {L: tensor[E] of token fractions}   (for heatmaps)
L is the global 0-based MoE-layer index (see context.moe_layer_index).

Reduction: one all-reduce (sum) over the default group of a [num_layers, fields] tensor. A
layer lives on one pipeline stage and every rank of that stage routes its own tokens (DP, CP,
and the sequence-parallel TP shards), so the sum over all ranks is the step total for every
layer, and all ranks (the logging rank included) end with full numbers. TP without sequence
parallelism counts tokens once per TP rank; only ratios are reported, so they are unaffected.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from . import context

# Columns of a layer's row; the expert load follows them.
_COMPETED, _MICROBATCHES, _AGREE_EXACT, _AGREE_OVERLAP, _AGREE_TOKENS = range(5)
_AFF_SUM, _AFF_SQSUM, _AFF_COUNT = range(5, 8)
_FIELDS = 8

_rows: dict[int, torch.Tensor] = {}  # layer -> float64 row [fields + E]
_load_cache: dict[int, torch.Tensor] = {}
enabled = True  # the bench turns this off to time megatron-identical router steps


def _row(layer: int, num_experts: int, device: torch.device) -> torch.Tensor:
    # Kept on the routing tensors' device: no host sync on the training path.
    row = _rows.get(layer)
    if row is None:
        row = _rows[layer] = torch.zeros(_FIELDS + num_experts, dtype=torch.float64,
                                         device=device)
    return row


@torch.no_grad()
def record_router_step(layer: int, routing_map: torch.Tensor) -> None:
    if not enabled:
        return
    row = _row(layer, routing_map.shape[-1], routing_map.device)
    row[_MICROBATCHES] += 1
    row[_FIELDS:] += routing_map.sum(dim=0).to(torch.float64)


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
    row[_AFF_SUM] += aff.sum()
    row[_AFF_SQSUM] += aff.square().sum()
    row[_AFF_COUNT] += aff.numel()
    row[_FIELDS:] += winners_mask.sum(dim=0).to(torch.float64)


def _reduced_rows(num_layers: Optional[int]) -> Optional[torch.Tensor]:
    """Sum every rank's rows; all ranks must call. None when no layer recorded anywhere."""
    num_layers = num_layers or context.configured_num_moe_layers()
    distributed = dist.is_available() and dist.is_initialized()
    width = max((r.numel() for r in _rows.values()), default=0)
    if num_layers is None:  # not configured: agree on the table size first
        num_layers = max(_rows, default=-1) + 1
        if distributed:
            dims = torch.tensor([num_layers, width], dtype=torch.int64)
            dist.all_reduce(dims, op=dist.ReduceOp.MAX)
            num_layers, width = int(dims[0]), int(dims[1])
    elif distributed:
        dims = torch.tensor([width], dtype=torch.int64)
        dist.all_reduce(dims, op=dist.ReduceOp.MAX)
        width = int(dims[0])
    if num_layers == 0 or width == 0:
        _rows.clear()
        return None
    device = next((r.device for r in _rows.values()), None)
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = torch.zeros(num_layers, width, dtype=torch.float64, device=device)
    for layer, row in _rows.items():
        table[layer, : row.numel()] = row
    _rows.clear()
    if distributed:
        dist.all_reduce(table)
    return table


def pop_step_metrics(num_layers: Optional[int] = None) -> dict[str, float]:
    """Reduce and clear this step's records; also refreshes what pop_expert_load returns."""
    table = _reduced_rows(num_layers)
    metrics: dict[str, float] = {}
    _load_cache.clear()
    if table is None:
        return metrics
    table = table.cpu()
    seen = competed = 0
    for layer, row in enumerate(table):
        if row[_MICROBATCHES] == 0:
            continue  # this layer ran no training forward this step
        seen += 1
        did_compete = bool(row[_COMPETED] > 0)
        competed += did_compete
        key = f"moe/layer{layer}"
        metrics[f"{key}/competed"] = float(did_compete)
        load = row[_FIELDS:]
        fractions = load / load.sum().clamp_min(1.0)
        _load_cache[layer] = fractions.float()
        metrics[f"{key}/load_max"] = float(fractions.max())
        metrics[f"{key}/load_min"] = float(fractions.min())
        if did_compete and row[_AGREE_TOKENS] > 0:
            metrics[f"{key}/agreement"] = float(row[_AGREE_EXACT] / row[_AGREE_TOKENS])
            metrics[f"{key}/agreement_overlap"] = float(row[_AGREE_OVERLAP] / row[_AGREE_TOKENS])
            mean = row[_AFF_SUM] / row[_AFF_COUNT]
            var = (row[_AFF_SQSUM] / row[_AFF_COUNT] - mean * mean).clamp_min(0.0)
            metrics[f"{key}/affinity_mean"] = float(mean)
            metrics[f"{key}/affinity_std"] = float(var.sqrt())
    if seen:
        metrics["moe/competition_rate"] = competed / seen
    return metrics


def pop_expert_load(num_layers: Optional[int] = None) -> dict[int, torch.Tensor]:
    """Token fractions per expert of each layer for the last reduced step. Call after
    pop_step_metrics (no communication); called alone it reduces first (a collective)."""
    if not _load_cache:
        pop_step_metrics(num_layers)
    load = dict(_load_cache)
    _load_cache.clear()
    return load


def reset() -> None:
    _rows.clear()
    _load_cache.clear()
