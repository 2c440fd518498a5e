"""The CompeteSMoE layer in bf16 against the same layer in fp32 (same weights, same tokens), on a
router step and on a competition step: outputs, gradients and logged losses agree within a
bf16 tolerance, and the competition picks the same winners.

Tolerance: bf16 keeps 8 significant bits, so one rounding is within 2^-9 ~ 2e-3 relative; the
layer rounds its input, weights and a handful of intermediate results (expert fc1, activation,
fc2, the combine). Measured here (CPU, torch 2.13; relative error = ||bf16 - fp32|| / ||fp32||,
router step / competition step): outputs 3.9e-3 / 3.8e-3, input gradients 4.7e-3 / 4.1e-3,
expert weight gradients at most 5.1e-3 / 6.4e-3, router gradient 2.5e-3 / 1.9e-3 (competition:
distillation loss only), logged losses within 6.8e-4 relative. REL_TOL = 2e-2 is 3x the
largest. The winners are compared exactly (as the per-expert winner counts): the layer scores
them in fp32, so bf16 expert outputs must not change who wins on these tokens.
"""

import dataclasses

import pytest
import torch

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe import context, metrics

from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config, tracked_losses
from tests.moe.single_rank import single_rank

REL_TOL = 2e-2
LOSS_NAMES = {False: ["load_balancing_loss"],
              True: ["competesmoe_distillation_loss", "competesmoe_diversity_loss",
                     "competesmoe_balance_loss"]}


@pytest.fixture(scope="module", autouse=True)
def _one_rank():
    with single_rank():
        yield


def _rel(a, b):
    return (a.float() - b.float()).norm().item() / b.float().norm().item()


def _step(layer, x, upstream, compete):
    layer.zero_grad(set_to_none=True)
    hidden = x.clone().requires_grad_(True)
    context.force_competition(compete)
    try:
        out, _ = layer(hidden)
        (out.float() * upstream).sum().backward()
    finally:
        context.force_competition(None)
    grads = {n: p.grad.float() for n, p in layer.named_parameters() if p.grad is not None}
    metrics.pop_step_metrics()
    return out.detach(), hidden.grad, grads, tracked_losses(LOSS_NAMES[compete]), \
        metrics.pop_expert_load()[0]


@pytest.mark.parametrize("compete", [False, True], ids=["router_step", "competition_step"])
def test_bf16_layer_follows_fp32(compete):
    cs = CompeteSMoEConfig(diversity_coef=0.1, router_loss_coef=0.5)
    fp32_config = make_config()
    bf16_config = dataclasses.replace(fp32_config, bf16=True, params_dtype=torch.bfloat16)
    fp32, bf16 = build_layer(fp32_config, cs), build_layer(bf16_config, cs)
    bf16.load_state_dict(fp32.state_dict())  # the same weights, rounded to bf16
    fp32.load_state_dict(bf16.state_dict())  # ... and the fp32 layer holds those rounded values
    assert next(bf16.experts.parameters()).dtype == torch.bfloat16
    fp32.train()
    bf16.train()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen).bfloat16()
    upstream = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    ref = _step(fp32, x.float(), upstream, compete)
    got = _step(bf16, x, upstream, compete)
    assert got[0].dtype == torch.bfloat16
    errors = {"output": _rel(got[0], ref[0]), "input grad": _rel(got[1], ref[1])}
    assert got[2].keys() == ref[2].keys() and "router.weight" in ref[2]
    for name in ref[2]:
        errors[name] = _rel(got[2][name], ref[2][name])
    for name in LOSS_NAMES[compete]:
        errors[name] = abs(got[3][name] - ref[3][name]) / abs(ref[3][name])
    assert max(errors.values()) <= REL_TOL, errors
    assert torch.equal(got[4], ref[4])  # the same tokens per expert: the same routing/winners
