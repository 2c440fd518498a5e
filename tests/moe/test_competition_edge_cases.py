"""Edge cases of the competition maths that the main unit tests left open, found by mutation
testing (docs/testing.md, "Mutation testing"): the hash behind the schedule against published
splitmix64 values, boundary values of the schedule (rate 0 and 1, one layer, cap 1, a draw
equal to the rate), relocation past a full step, top-K of 1, diversity with K = 2, and the
messages of the argument checks."""

import numpy as np
import pytest
import torch

from csmoe_megatron.moe.affinity import gates_from_affinity
from csmoe_megatron.moe.losses import diversity_loss
from csmoe_megatron.moe.schedule import (CompetitionSchedule, _relocate_to_cap, _splitmix64,
                                         uniform_draws)

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64_py(x: int) -> int:
    """splitmix64's finaliser in plain Python integers (Steele, Lea & Flood 2014)."""
    z = (x + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix64_gives_the_published_sequence():
    # The first outputs of SplitMix64 seeded with 0 (the state advances by GOLDEN each call).
    states = np.array([0, GOLDEN, (2 * GOLDEN) & MASK], dtype=np.uint64)
    assert [int(v) for v in _splitmix64(states)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    assert [int(v) for v in _splitmix64(values)] == [_splitmix64_py(int(v)) for v in values]


def test_uniform_draws_are_the_documented_hash_of_seed_step_layer():
    """key = sm(sm(sm(seed) ^ step) ^ sm(layer + c)), u = top 53 bits / 2^53: a schedule (and
    so a resumed run) must not change between versions."""
    seed, steps, layers = 1234, [0, 1, 7, 1000, 2**40], 3
    got = uniform_draws(seed, np.array(steps), layers)
    seed_key = _splitmix64_py(seed)
    for i, step in enumerate(steps):
        step_key = _splitmix64_py(seed_key ^ step)
        for layer in range(layers):
            key = _splitmix64_py(step_key ^ _splitmix64_py(layer + 0x5851F42D4C957F2D))
            assert got[i, layer] == (key >> 11) / 2**53
    assert got.dtype == np.float64
    assert uniform_draws(seed, 7, layers).shape == (1, layers)  # a scalar step is one row


def test_schedule_boundaries():
    every = CompetitionSchedule(seed=3, num_layers=2, total_steps=5, rate=1.0)
    assert all(every.layers_at(s) == {0, 1} for s in range(5))  # default: no warm-up
    assert every.realised_rate(range(2, 3)) == 1.0
    assert every.realised_rate(range(0)) == 0.0
    one = CompetitionSchedule(seed=3, num_layers=1, total_steps=5, rate=1.0)
    assert one.competes(0, 0) and one.realised_rate(range(5)) == 1.0
    assert CompetitionSchedule(seed=3, num_layers=0, total_steps=0, rate=0.5).realised_rate(
        range(0)) == 0.0
    never = CompetitionSchedule(seed=3, num_layers=2, total_steps=5, rate=0.0, warmup_fraction=1.0)
    assert never.realised_rate(range(5)) == 0.0
    capped = CompetitionSchedule(seed=3, num_layers=3, total_steps=6, rate=1.0,
                                 max_compete_per_step=1)
    assert [len(capped.layers_at(s)) for s in range(6)] == [1] * 6


def test_a_draw_equal_to_the_rate_does_not_compete():
    seed, step = 9, 4
    rate = float(uniform_draws(seed, np.array([step]), 1)[0, 0])
    assert not CompetitionSchedule(seed, 1, 10, rate).competes(step, 0)
    assert CompetitionSchedule(seed, 1, 10, np.nextafter(rate, 1.0)).competes(step, 0)


def test_relocation_skips_a_full_earlier_step():
    drawn = np.zeros((4, 2), dtype=bool)
    drawn[1, 0] = drawn[2, 0] = drawn[2, 1] = True  # layer 1 finds steps 2 and 1 full
    chosen = _relocate_to_cap(drawn, cap=1)
    assert chosen[:, 1].tolist() == [True, False, False, False]
    assert chosen.sum(axis=1).tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_layers=-1, total_steps=1, rate=0.5), r"^num_layers and total_steps must be >= 0$"),
    (dict(num_layers=1, total_steps=-1, rate=0.5), r"^num_layers and total_steps must be >= 0$"),
    (dict(num_layers=1, total_steps=1, rate=1.5), r"^rate must be in \[0, 1\], got 1.5$"),
    (dict(num_layers=1, total_steps=1, rate=-0.1), r"^rate must be in \[0, 1\], got -0.1$"),
    (dict(num_layers=1, total_steps=1, rate=0.5, warmup_fraction=1.5),
     r"^warmup_fraction must be in \[0, 1\], got 1.5$"),
])
def test_schedule_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompetitionSchedule(seed=0, **kwargs)


def test_schedule_query_refusals():
    schedule = CompetitionSchedule(seed=0, num_layers=2, total_steps=4, rate=0.5)
    with pytest.raises(ValueError, match="^step must be >= 0, got -1$"):
        schedule.layers_at(-1)
    with pytest.raises(IndexError, match=r"^layer 2 out of range \[0, 2\)$"):
        schedule.competes(0, 2)


def test_top_1_gate_is_one():
    affinity = torch.tensor([[0.2, 0.9, 0.4], [0.8, 0.1, 0.3]])
    gates, mask, idx = gates_from_affinity(affinity, 1)
    assert gates.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]] and idx.tolist() == [[1], [0]]
    assert mask.sum().item() == 2


@pytest.mark.parametrize("top_k,norm,message", [
    (0, "sum", r"^top_k must be in \[1, 3\], got 0$"),
    (4, "sum", r"^top_k must be in \[1, 3\], got 4$"),
    (2, "max", r"^norm must be 'sum' or 'sigmoid', got 'max'$"),
])
def test_gate_refusals(top_k, norm, message):
    with pytest.raises(ValueError, match=message):
        gates_from_affinity(torch.rand(2, 3), top_k, norm)


def test_diversity_of_two_winners_by_hand():
    # One token, winners (1, 0) and (1, 1): cosine 1/sqrt(2); orthogonal pair: 0.
    outs = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]])
    assert diversity_loss(outs, "pairs").item() == pytest.approx((2 ** -0.5 + 0.0) / 2)
    # The authors' K x K mean with a zero diagonal: each cosine counted twice, over K*K = 4.
    assert diversity_loss(outs).item() == pytest.approx((2 * 2 ** -0.5 / 4 + 0.0) / 2)
