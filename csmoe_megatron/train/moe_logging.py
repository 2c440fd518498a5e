"""MoE numbers and pictures for the logger, reduced once per logging interval.

Numbers: megatron's aux-loss tracker (balance, z-loss, and the CompeteSMoE losses recorded
through it) plus the CompeteSMoE routing metrics (competition rate, router-competition
agreement, affinity statistics, expert load). Pictures, every `routing_images_interval` steps:
an expert-load heatmap (layers x experts) and the agreement history (layers x logged
intervals with competition), to TensorBoard and as PNGs under <run.dir>/routing/.

Every step, `end_step(skipped)` adds the step's tracker rows and routing rows to the interval's
device tensors (or drops them for a skipped step): no host sync, no collective. At logging steps
`pop(step)` sums everything over all ranks in one all-reduce of one tensor and reads it once.
The names and sizes come from the config, so every rank, on every pipeline stage, reduces the
same tensor without first agreeing on it.

Reported losses are per-micro-batch means over the interval, per MoE layer: the CompeteSMoE
losses over its competition micro-batches, the router's over its router micro-batches, each
averaged over data-parallel replicas (losses computed on token shards under sequence
parallelism are summed over the shards first, as megatron's tracker does).
"""

from __future__ import annotations

import math

from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core.transformer.moe.moe_utils import (clear_aux_losses_tracker,
                                                     get_moe_layer_wise_logging_tracker)

from ..config.schema import ExperimentConfig
from ..device import current_device
from ..moe import metrics as routing_metrics
from ..moe.layer import LOSS_NAMES as COMPETITION_LOSSES

# Losses whose per-rank value is a partial sum over the TP x CP token shards.
_SHARDED = ("load_balancing_loss",) + COMPETITION_LOSSES


def tracked_loss_names(cfg: ExperimentConfig) -> list[str]:
    """The tracker names a run's MoE layers can record, identical on every rank."""
    moe = cfg.model.moe
    names = ["load_balancing_loss"]
    if moe.z_loss_coeff is not None:
        names.append("z_loss")
    if moe.router == "competesmoe":
        names.extend(COMPETITION_LOSSES)
    return sorted(names)


class MoEMetricsLogger:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path, log, num_microbatches: int):
        self.log = log
        self.names = tracked_loss_names(cfg)
        self.moe_layers = cfg.model.moe_layers  # transformer-layer index of each MoE layer
        self.num_experts = cfg.model.moe.num_experts
        self.num_microbatches = num_microbatches
        self.images_interval = cfg.logging.routing_images_interval
        self.picture_dir = run_dir / "routing"
        self.device = current_device()
        world = dist.get_world_size()
        shards = cfg.parallel.tensor * cfg.parallel.context
        self.replicas = world // (cfg.parallel.pipeline * shards)  # data-parallel replicas
        self.shards = shards
        # Interval sums: megatron's rows are per transformer layer.
        self.losses = torch.zeros(len(self.names), cfg.model.num_layers, dtype=torch.float64,
                                  device=self.device)
        self.steps = 0
        # Since the run began (saved with each checkpoint, see state_dict).
        self.agreement_history: list[list[float]] = []  # one row per logged interval
        self.agreement_steps: list[int] = []  # the step of each row (the pictures' x axis)
        self.rate_sum, self.rate_steps = 0.0, 0

    def state_dict(self) -> dict:
        """The run-long counters, plain JSON values, for the checkpoint's progress record. The
        interval sums need no saving: every saved step is a logged one (loop.py)."""
        # A layer that has not competed yet is NaN here; strict JSON has no NaN: null.
        return {"competition_rate_sum": self.rate_sum, "competition_rate_steps": self.rate_steps,
                "agreement_history": [[None if math.isnan(v) else v for v in row]
                                      for row in self.agreement_history],
                "agreement_steps": list(self.agreement_steps)}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict's counters; {} (a fresh run, or an older checkpoint) keeps zeros."""
        self.rate_sum = float(state.get("competition_rate_sum", 0.0))
        self.rate_steps = int(state.get("competition_rate_steps", 0))
        history = [[float("nan") if v is None else float(v) for v in row]
                   for row in state.get("agreement_history", [])]
        steps = [int(v) for v in state.get("agreement_steps", [])]
        if len(steps) == len(history):  # else a checkpoint from before the steps were kept
            self.agreement_history, self.agreement_steps = history, steps

    def end_step(self, skipped: bool = False) -> None:
        """Every rank, every step (skipped ones too): no collective, no host sync."""
        tracker = get_moe_layer_wise_logging_tracker()
        if not skipped:
            for i, name in enumerate(self.names):
                entry = tracker.get(name)
                if entry is not None:
                    values = entry["values"]
                    self.losses[i, : values.numel()] += values[: self.losses.shape[1]]
            self.steps += 1
        clear_aux_losses_tracker()
        routing_metrics.end_step(keep=not skipped)

    def images_due(self, step: int) -> bool:
        return self.images_interval > 0 and step % self.images_interval == 0

    def pop(self, step: int) -> dict:
        """Collective over all ranks (every rank calls it at the same steps)."""
        routing = routing_metrics.interval_table(len(self.moe_layers), self.num_experts,
                                                 self.device)
        flat = torch.cat([self.losses.flatten(), routing.flatten()])
        dist.all_reduce(flat)
        flat = flat.cpu()  # the one host read of the interval
        losses = flat[: self.losses.numel()].view_as(self.losses)
        routing = flat[self.losses.numel():].view_as(routing)
        steps, self.steps = self.steps, 0
        self.losses.zero_()
        out, loads = routing_metrics.metrics_from_table(routing)
        competed = {k: out.get(f"moe/layer{k}/competed", 0.0)
                    for k in range(len(self.moe_layers))}
        out.update(self._losses(losses, competed, steps))
        if "moe/competition_rate" in out and steps:  # the realised rate since the run began
            self.rate_sum += out["moe/competition_rate"] * steps
            self.rate_steps += steps
            out["moe/competition_rate_cumulative"] = self.rate_sum / self.rate_steps
        self._remember_agreement(out, step)
        if self.images_due(step) and self.log.enabled:
            self._draw(loads, step)
        return out

    def _losses(self, sums: torch.Tensor, competed: dict[int, float], steps: int) -> dict:
        """Interval sums over ranks -> per-micro-batch means (see the module docstring)."""
        micro = self.num_microbatches * steps
        out: dict = {}
        for i, name in enumerate(self.names):
            per_layer = {}
            for k, layer in enumerate(self.moe_layers):
                fraction = competed.get(k, 0.0)
                kind = fraction if name in COMPETITION_LOSSES else 1.0 - fraction
                count = micro * kind * self.replicas * (1 if name in _SHARDED else self.shards)
                if count > 0:
                    per_layer[k] = float(sums[i, layer]) / count
            for k, value in per_layer.items():
                out[f"moe/layer{k}/{name}"] = value
            if per_layer:
                out[f"moe/{name}"] = sum(per_layer.values()) / len(per_layer)
        return out

    def _remember_agreement(self, metrics: dict, step: int) -> None:
        values = [metrics.get(f"moe/layer{k}/agreement") for k in range(len(self.moe_layers))]
        if all(v is None for v in values):
            return
        last = self.agreement_history[-1] if self.agreement_history else [float("nan")] * len(values)
        # A layer that did not compete in this interval keeps its last measured value (NaN,
        # drawn as "not measured yet", until its first competition).
        self.agreement_history.append([last[i] if v is None else v for i, v in enumerate(values)])
        self.agreement_steps.append(step)

    def _draw(self, loads: dict, step: int) -> None:
        from ..analysis import routing_images as pictures

        self.picture_dir.mkdir(parents=True, exist_ok=True)
        if loads:
            rgb = pictures.render_rgb(pictures.expert_load_figure(loads, step))
            self.log.add_image("moe/expert_load", pictures.tensorboard_image(rgb), step)
            pictures.write_png(rgb, self.picture_dir / f"expert_load_step{step:07d}.png")
        if self.agreement_history:
            rgb = pictures.render_rgb(pictures.agreement_figure(
                self.agreement_history, self.agreement_steps, step))
            self.log.add_image("moe/router_competition_agreement",
                               pictures.tensorboard_image(rgb), step)
            pictures.write_png(rgb, self.picture_dir / "agreement.png")
