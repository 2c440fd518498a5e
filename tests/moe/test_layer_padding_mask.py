"""padding_mask ([B, S], True = padding, megatron's router convention): padded tokens take no
part in the competition's losses, gradients and metrics, nor in the router step's expert load.

Witness: the last PAD positions of every sequence are padding, so the valid tokens are exactly
x[:SEQ - PAD]; a layer run on x with the mask must give what the same layer gives on x[:SEQ-PAD]
without one (outputs of valid tokens, logged losses, every gradient, metrics), while every
token, padded or not, gets the output it gets without a mask.
"""

import pytest
import torch

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe import context, metrics

from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config, tracked_losses
from tests.moe.single_rank import single_rank

PAD = 2
COMPETITION_LOSSES = ["competesmoe_distillation_loss", "competesmoe_diversity_loss",
                      "competesmoe_balance_loss"]


@pytest.fixture(scope="module", autouse=True)
def _one_rank():
    with single_rank():
        yield


def _run(layer, x, upstream, mask, names):
    layer.zero_grad(set_to_none=True)
    hidden = x.clone().requires_grad_(True)
    out, _ = layer(hidden, padding_mask=mask)
    (out * upstream).sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    return out.detach(), hidden.grad, tracked_losses(names), grads, metrics.pop_step_metrics(), \
        metrics.pop_expert_load()


@pytest.mark.parametrize("combine", ["winners", "full"])
def test_competition_ignores_padded_tokens(combine):
    layer = build_layer(make_config(), CompeteSMoEConfig(combine=combine, diversity_coef=0.1,
                                                         router_loss_coef=0.5))
    layer.train()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    upstream = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    upstream[SEQ - PAD:] = 0  # the task loss ignores padding too
    mask = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    mask[:, SEQ - PAD:] = True
    context.force_competition(True)
    try:
        masked = _run(layer, x, upstream, mask, COMPETITION_LOSSES)
        valid = _run(layer, x[:SEQ - PAD], upstream[:SEQ - PAD], None, COMPETITION_LOSSES)
        unmasked = _run(layer, x, upstream, None, COMPETITION_LOSSES)
    finally:
        context.force_competition(None)
    out, in_grad, losses, grads, step_metrics, load = masked
    torch.testing.assert_close(out[:SEQ - PAD], valid[0])
    torch.testing.assert_close(out, unmasked[0])  # padded tokens still get their output
    torch.testing.assert_close(in_grad[:SEQ - PAD], valid[1])
    assert in_grad[SEQ - PAD:].abs().sum() == 0  # no loss reaches a padded token
    assert losses.keys() == valid[2].keys() == set(COMPETITION_LOSSES)
    assert losses == pytest.approx(valid[2], rel=1e-6)
    assert grads.keys() == valid[3].keys() and "router.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, valid[3][name], msg=name)
    assert step_metrics == pytest.approx(valid[4], rel=1e-6)
    torch.testing.assert_close(load[0], valid[5][0])


def test_router_step_load_ignores_padded_tokens():
    layer = build_layer(make_config())
    layer.train()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    upstream = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    upstream[SEQ - PAD:] = 0
    mask = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    mask[:, SEQ - PAD:] = True
    context.force_competition(False)
    try:
        masked = _run(layer, x, upstream, mask, ["load_balancing_loss"])
        valid = _run(layer, x[:SEQ - PAD], upstream[:SEQ - PAD], None, ["load_balancing_loss"])
        unmasked = _run(layer, x, upstream, None, ["load_balancing_loss"])
    finally:
        context.force_competition(None)
    torch.testing.assert_close(masked[0][:SEQ - PAD], valid[0])
    torch.testing.assert_close(masked[0], unmasked[0])  # padded tokens are still routed
    # megatron's router leaves padded tokens out of its balance loss; our expert-load metric
    # must count the same tokens.
    assert masked[2] == pytest.approx(valid[2], rel=1e-6)
    torch.testing.assert_close(masked[5][0], valid[5][0])
