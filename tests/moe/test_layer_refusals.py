"""Every refusal of moe/layer.py, moe/router.py and moe/dispatch.py raises with a message that
names the problem. Config checks run on copies of a valid TransformerConfig (copy.copy skips
its __post_init__, which would refuse some of these combinations itself, with megatron's words).
"""

import copy
import dataclasses

import pytest
import torch

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe.dispatch import build_dispatcher
from csmoe_megatron.moe.layer import check_layer_config
from csmoe_megatron.moe.router import CompeteSMoERouter, check_router_config

from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config
from tests.moe.single_rank import single_rank


@pytest.fixture(scope="module", autouse=True)
def _one_rank():
    with single_rank():
        yield


def _with(config, **fields):
    out = copy.copy(config)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


LAYER_CONFIG_REFUSALS = [
    (dict(moe_shared_expert_intermediate_size=16), {}, "shared experts are not supported"),
    (dict(moe_latent_size=4), {}, "latent projections are not supported"),
    (dict(moe_token_dispatcher_type="flex"), {},
     r"dispatcher 'flex' \(use alltoall or allgather\)"),
    ({}, dict(gate_norm="softmax"), "gate_norm must be 'sum' or 'sigmoid', got 'softmax'"),
    ({}, dict(token_chunk=-1), "token_chunk must be >= 0"),
    ({}, dict(combine="some"), "combine must be 'winners' or 'full', got 'some'"),
]


@pytest.mark.parametrize("fields,cs_fields,message", LAYER_CONFIG_REFUSALS)
def test_layer_config_refusals(fields, cs_fields, message):
    config = _with(make_config(), **fields)
    with pytest.raises(ValueError, match="^CompeteSMoELayer: .*" + message):
        check_layer_config(config, CompeteSMoEConfig(**cs_fields))


def test_layer_config_names_every_problem_at_once():
    config = _with(make_config(), moe_shared_expert_intermediate_size=16)
    with pytest.raises(ValueError, match="shared experts.*; token_chunk must be >= 0"):
        check_layer_config(config, CompeteSMoEConfig(token_chunk=-2))


def test_layer_refuses_a_bad_config_before_building():
    with pytest.raises(ValueError, match="combine must be"):
        build_layer(make_config(), CompeteSMoEConfig(combine="none"))


def test_layer_needs_a_competesmoe_router():
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.transformer.spec_utils import build_module

    from csmoe_megatron.moe.layer import CompeteSMoELayer

    class OtherRouter(torch.nn.Module):
        pass

    config = make_config()
    spec = get_moe_module_spec(use_te=False, num_experts=config.num_moe_experts)
    spec.module = CompeteSMoELayer
    spec.submodules = dataclasses.replace(spec.submodules, router=OtherRouter)
    with pytest.raises(ValueError, match="CompeteSMoELayer needs a CompeteSMoERouter"):
        build_module(spec, config=config)


def test_competition_step_refuses_tp_without_sequence_parallelism():
    layer = build_layer(make_config())
    layer.train()

    class TwoRanks:  # the only thing the check asks of the attention TP group
        def size(self):
            return 2

    layer.attn_tp_group = TwoRanks()
    with pytest.raises(ValueError, match="tensor parallelism needs sequence parallelism"):
        layer.competition_forward(torch.randn(SEQ, BATCH, HIDDEN))


ROUTER_REFUSALS = [
    (dict(moe_router_score_function="sigmoid"), "moe_router_score_function must be 'softmax'"),
    (dict(moe_router_pre_softmax=True), "moe_router_pre_softmax must be False"),
    (dict(moe_router_num_groups=2), "group-limited routing is not part of CompeteSMoE"),
    (dict(moe_router_group_topk=1), "group-limited routing is not part of CompeteSMoE"),
    (dict(moe_router_topk_scaling_factor=2.0), "moe_router_topk_scaling_factor must be None"),
    (dict(moe_router_enable_expert_bias=True), "aux-loss-free expert bias is not part"),
    (dict(add_bias_linear=True), r"bias-free \(add_bias_linear=False\)"),
    (dict(moe_router_load_balancing_type="sinkhorn"),
     "moe_router_load_balancing_type must be 'aux_loss' or 'none'"),
    (dict(moe_router_force_load_balancing=True), "forced/replayed routing is not supported"),
    (dict(moe_enable_routing_replay=True), "forced/replayed routing is not supported"),
]


@pytest.mark.parametrize("fields,message", ROUTER_REFUSALS)
def test_router_config_refusals(fields, message):
    with pytest.raises(ValueError, match="^CompeteSMoE router: .*" + message):
        check_router_config(_with(make_config(), **fields))


def test_router_accepts_the_valid_config_and_refuses_at_construction():
    check_router_config(make_config())  # no raise: the refusals above are not vacuous
    check_router_config(_with(make_config(), moe_router_topk_scaling_factor=1.0,
                              moe_router_load_balancing_type="none"))
    with pytest.raises(ValueError, match="moe_router_pre_softmax must be False"):
        CompeteSMoERouter(_with(make_config(), moe_router_pre_softmax=True))


def test_dispatcher_refuses_other_kinds():
    config = _with(make_config(), moe_token_dispatcher_type="flex")
    with pytest.raises(ValueError, match="alltoall and allgather token dispatchers, not 'flex'"):
        build_dispatcher(1, [0], config, pg_collection=None)
