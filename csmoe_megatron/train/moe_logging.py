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
    def __init__(self, run_dir: Path, log, images_interval: int, moe_layers: list[int],
                 num_layers: int):
        self.log = log
        self.num_layers = num_layers  # megatron's tracker keeps one row per transformer layer
        self.moe_index = {layer: k for k, layer in enumerate(moe_layers)}
        self.num_moe_layers = len(moe_layers)
        self.images_interval = images_interval
        self.picture_dir = run_dir / "routing"
        self.agreement_history: list[list[float]] = []  # one row per step with a competition
        self.rate_sum, self.rate_steps = 0.0, 0

    def pop(self, num_microbatches: int, step: int) -> dict:
        """Collective over all ranks (every rank calls it once per step)."""
        out = _pop_aux_losses(num_microbatches, self.num_layers, self.moe_index)
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


def _agree_on_tracked_names(tracker: dict, num_layers: int) -> list[str]:
    """Every rank must reduce the same names in the same order (one collective each). A pipeline
    stage without MoE layers (moe.layer_freq > 1), or whose layers have not yet run a kind of
    step, lacks some names: give it zero rows. Only the pipeline all-reduce spans stages; the
    tensor/data-parallel reductions stay within a stage, where all ranks hold the same layers."""
    import torch
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, sorted(tracker))
    names = sorted(set().union(*gathered))
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    for name in names:
        if name not in tracker:
            tracker[name] = {"values": torch.zeros(num_layers, device=device), "reduce_group": None,
                             "avg_group": None, "reduce_group_has_dp": False}
    return names


def _pop_aux_losses(num_microbatches: int, num_layers: int, moe_index: dict[int, int]) -> dict:
    """Mean over MoE layers and per MoE layer; megatron's rows are per transformer layer, so
    they are renamed to the MoE-layer index the routing metrics use (moe/layer{L}/...)."""
    out: dict = {}
    tracker = get_moe_layer_wise_logging_tracker()
    names = _agree_on_tracked_names(tracker, num_layers)
    if not names:
        return out
    reduce_aux_losses_tracker_across_ranks(track_names=names)
    for name in names:
        values = tracker[name]["values"].float() / num_microbatches
        active = values[values != 0]
        if active.numel():
            out[f"moe/{name.replace(' ', '_')}"] = active.mean().item()
        for layer, v in enumerate(values.tolist()):
            if v != 0 and layer in moe_index:
                out[f"moe/layer{moe_index[layer]}/{name.replace(' ', '_')}"] = v
    clear_aux_losses_tracker()
    return out
