"""Competition schedule inside the layer: every rank takes the same branch, the branch follows
CompetitionSchedule per global MoE layer, eval never competes; metrics are reduced and agree
with the branch taken; global MoE-layer indices across pipeline stages."""
import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.dist_utils import run_distributed  # noqa: E402

from csmoe_megatron.moe import context  # noqa: E402


def test_moe_layer_index_is_global_over_the_pattern():
    config = SimpleNamespace(num_layers=6, moe_layer_freq=[1, 0, 1, 1, 0, 1])
    assert [context.moe_layer_index(config, n) for n in (1, 3, 4, 6)] == [0, 1, 2, 3]
    assert context.num_moe_layers(config) == 4
    with pytest.raises(ValueError):
        context.moe_layer_index(config, 2)  # a dense layer
    every_other = SimpleNamespace(num_layers=4, moe_layer_freq=2)
    assert context.moe_layer_pattern(every_other) == [1, 0, 1, 0]


def test_context_requires_set_step_after_configure():
    context.reset()
    cs = SimpleNamespace(rate=1.0, warmup_fraction=0.0, max_compete_per_step=None)
    assert not context.competes(0, cs)  # not configured: router steps only
    context.configure_run(seed=1, total_steps=10, num_moe_layers=1)
    with pytest.raises(RuntimeError):
        context.competes(0, cs)
    context.set_step(3)
    assert context.competes(0, cs)
    context.reset()


def _schedule_worker(rank, world_size):
    import torch
    import torch.distributed as dist

    from csmoe_megatron.config.schema import CompeteSMoEConfig
    from csmoe_megatron.moe import context, metrics
    from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config

    config = make_config(expert=2, num_layers=2)
    cs = CompeteSMoEConfig(rate=0.5, warmup_fraction=0.2, max_compete_per_step=1)
    layers = [build_layer(config, cs, layer_number=n) for n in (1, 2)]
    context.configure_run(seed=5, total_steps=10, num_moe_layers=2)
    schedule = context.schedule(cs)
    gen = torch.Generator().manual_seed(rank)
    for step in range(10):
        context.set_step(step)
        branches = []
        for layer in layers:
            layer.train()
            for _ in range(2):  # micro-batches
                branches.append(layer.competes_now())
                x = torch.randn(SEQ, BATCH, HIDDEN, generator=gen, requires_grad=True)
                out, _ = layer(x)
                out.square().mean().backward()
        everyone = [None] * world_size
        dist.all_gather_object(everyone, branches)
        assert all(b == branches for b in everyone), everyone
        expected = [schedule.competes(step, i) for i in (0, 1) for _ in range(2)]
        assert branches == expected, (step, branches, expected)
        got = metrics.pop_step_metrics()
        load = metrics.pop_expert_load()
        for i in (0, 1):
            assert got[f"moe/layer{i}/competed"] == float(schedule.competes(step, i))
            assert ("moe/layer%d/agreement" % i in got) == schedule.competes(step, i)
            assert torch.isclose(load[i].sum(), torch.tensor(1.0))
        assert got["moe/competition_rate"] == len(schedule.layers_at(step)) / 2
    assert any(schedule.layers_at(s) for s in range(10))  # the run exercised both branches

    context.force_competition(True)
    for layer in layers:
        layer.eval()
        assert not layer.competes_now()
        with torch.no_grad():
            layer(torch.randn(SEQ, BATCH, HIDDEN))
    context.force_competition(None)
    assert metrics.pop_step_metrics() == {}  # eval records nothing
    context.reset()


def test_all_ranks_follow_the_schedule_and_metrics():
    run_distributed(_schedule_worker, 2, parallel=dict(expert=2))
