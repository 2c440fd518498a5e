"""The forward step megatron's pipeline schedules call once per micro-batch, and its loss."""

from __future__ import annotations

from functools import partial

import torch

from ..device import current_device


def masked_lm_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(sum of masked token losses, token count, reporting pair); megatron divides by the count
    and by the number of micro-batches itself (calculate_per_token_loss=False)."""
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(per_token_loss.reshape(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss_sum.detach(), num_tokens.detach().float()])
    return loss_sum, num_tokens, {"lm loss": report}


def _to_device(batch: dict) -> dict:
    # The loader collates on the host; the model lives on this rank's GPU (or the CPU).
    if not torch.cuda.is_available():
        return batch
    return {k: v.to(current_device(), non_blocking=True) for k, v in batch.items()}


def forward_step(data_iterator, model):
    batch = _to_device(next(data_iterator))
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(masked_lm_loss, batch["loss_mask"])
