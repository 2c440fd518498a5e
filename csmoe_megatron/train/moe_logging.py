"""Per-step MoE numbers and pictures for the logger.

Numbers: megatron's aux-loss tracker (balance, z-loss, and the CompeteSMoE losses recorded
through it) plus the CompeteSMoE routing metrics (competition rate, router-competition
agreement, affinity statistics, expert load). Pictures, every `routing_images_interval` steps:
an expert-load heatmap (layers x experts) and the agreement history (layers x competition
steps), to TensorBoard and as PNGs under <run.dir>/routing/.
"""

from __future__ import annotations

from pathlib import Path

from megatron.core.transformer.moe.moe_utils import (clear_aux_losses_tracker,
                                                     get_moe_layer_wise_logging_tracker,
                                                     reduce_aux_losses_tracker_across_ranks)

from ..moe import metrics as routing_metrics


class MoEMetricsLogger:
    def __init__(self, run_dir: Path, log, images_interval: int, num_moe_layers: int):
        self.log = log
        self.images_interval = images_interval
        self.num_moe_layers = num_moe_layers
        self.picture_dir = run_dir / "routing"
        self.agreement_history: list[list[float]] = []  # one row per step with a competition
        self.rate_sum, self.rate_steps = 0.0, 0

    def pop(self, num_microbatches: int, step: int) -> dict:
        """Collective over all ranks (every rank calls it once per step)."""
        out = _pop_aux_losses(num_microbatches)
        out.update(routing_metrics.pop_step_metrics())
        loads = routing_metrics.pop_expert_load()
        if "moe/competition_rate" in out:  # the realised rate since this launch started
            self.rate_sum += out["moe/competition_rate"]
            self.rate_steps += 1
            out["moe/competition_rate_cumulative"] = self.rate_sum / self.rate_steps
        self._remember_agreement(out)
        if self.images_interval > 0 and step % self.images_interval == 0 and self.log.enabled:
            self._draw(loads, step)
        return out

    def _remember_agreement(self, metrics: dict) -> None:
        values = [metrics.get(f"moe/layer{layer}/agreement") for layer in range(self.num_moe_layers)]
        if all(v is None for v in values):
            return
        last = self.agreement_history[-1] if self.agreement_history else [0.0] * len(values)
        # A layer that did not compete this step keeps its last measured value.
        self.agreement_history.append([last[i] if v is None else v for i, v in enumerate(values)])

    def _draw(self, loads: dict, step: int) -> None:
        from ..analysis.routing_images import agreement_image, expert_load_image, write_png

        self.picture_dir.mkdir(parents=True, exist_ok=True)
        if loads:
            image = expert_load_image(loads)
            self.log.add_image("moe/expert_load", image, step)
            write_png(image, self.picture_dir / f"expert_load_step{step:07d}.png")
        if self.agreement_history:
            image = agreement_image(self.agreement_history)
            self.log.add_image("moe/router_competition_agreement", image, step)
            write_png(image, self.picture_dir / "agreement.png")


def _pop_aux_losses(num_microbatches: int) -> dict:
    out: dict = {}
    tracker = get_moe_layer_wise_logging_tracker()
    if not tracker:
        return out
    reduce_aux_losses_tracker_across_ranks()
    for name, entry in sorted(tracker.items()):
        values = entry["values"].float() / num_microbatches
        active = values[values != 0]
        if active.numel():
            out[f"moe/{name.replace(' ', '_')}"] = active.mean().item()
        for layer, v in enumerate(values.tolist()):
            if v != 0:
                out[f"moe/layer{layer}/{name.replace(' ', '_')}"] = v
    clear_aux_losses_tracker()
    return out
