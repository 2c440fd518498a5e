"""Per-step MoE numbers for the logger: megatron's aux-loss tracker (balance, z-loss, and the
CompeteSMoE losses recorded through it) plus the CompeteSMoE routing metrics."""

from __future__ import annotations

from megatron.core.transformer.moe.moe_utils import (clear_aux_losses_tracker,
                                                     get_moe_layer_wise_logging_tracker,
                                                     reduce_aux_losses_tracker_across_ranks)


def pop_moe_metrics(num_microbatches: int, log, step: int, images_interval: int) -> dict:
    """Collective over all ranks. Returns {"moe/<loss>": mean over MoE layers, ...}."""
    out: dict = {}
    tracker = get_moe_layer_wise_logging_tracker()
    if tracker:
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
    from ..moe import metrics as routing_metrics

    out.update(routing_metrics.pop_step_metrics())
    loads = routing_metrics.pop_expert_load()
    if images_interval > 0 and step % images_interval == 0 and loads:
        from ..analysis.routing_images import expert_load_image

        log.add_image("moe/expert_load", expert_load_image(loads), step)
    return out
