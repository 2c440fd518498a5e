"""CompetitionSchedule: determinism without communication, warm-up, cap, rate (spec §4)."""
import subprocess
import sys

import numpy as np
import pytest

from csmoe_megatron.moe.schedule import (
    BLOCK_STEPS,
    CompetitionSchedule,
    _relocate_to_cap,
    uniform_draws,
)

CFG = dict(seed=1234, num_layers=8, total_steps=5000, rate=0.07, warmup_fraction=0.05,
           max_compete_per_step=2)


def _all_layers(schedule: CompetitionSchedule, steps) -> list[list[int]]:
    return [sorted(schedule.layers_at(s)) for s in steps]


def test_two_objects_agree_and_seed_matters():
    a, b = CompetitionSchedule(**CFG), CompetitionSchedule(**CFG)
    steps = range(0, 5000, 7)
    assert _all_layers(a, steps) == _all_layers(b, steps)
    other = CompetitionSchedule(**{**CFG, "seed": 1235})
    assert _all_layers(a, steps) != _all_layers(other, steps)


def test_subprocess_agrees():
    steps = list(range(240, 3000, 13))
    code = (
        "from csmoe_megatron.moe.schedule import CompetitionSchedule\n"
        f"s = CompetitionSchedule(**{CFG!r})\n"
        f"print([sorted(s.layers_at(t)) for t in {steps!r}])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repr(_all_layers(CompetitionSchedule(**CFG), steps))


def test_resume_fresh_object_out_of_order():
    sequential = CompetitionSchedule(**CFG)
    expected = _all_layers(sequential, range(5000))
    resumed = CompetitionSchedule(**CFG)
    for step in [4999, 3100, 250, 2048, 1300]:
        assert sorted(resumed.layers_at(step)) == expected[step]
    assert resumed.competes(3100, 0) == (0 in expected[3100])


def test_warmup_has_no_competition():
    schedule = CompetitionSchedule(**{**CFG, "rate": 0.9})
    assert schedule.warmup_steps == 250
    assert all(not schedule.layers_at(s) for s in range(250))
    assert schedule.layers_at(250)


def test_cap_never_exceeded():
    schedule = CompetitionSchedule(**{**CFG, "rate": 0.2})  # 1.6 draws/step vs cap 2
    assert max(len(schedule.layers_at(s)) for s in range(6000)) <= 2


def test_relocation_preserves_count_per_block():
    schedule = CompetitionSchedule(**CFG)
    warm, total = schedule.warmup_steps, schedule.total_steps
    starts = list(range(warm, total, BLOCK_STEPS))
    for start in starts:
        end = min(start + BLOCK_STEPS, total)  # the last block is cut at total_steps
        drawn = uniform_draws(CFG["seed"], np.arange(start, end), CFG["num_layers"]) < CFG["rate"]
        decided = sum(len(schedule.layers_at(s)) for s in range(start, end))
        assert decided == drawn.sum()
        per_layer = np.zeros(CFG["num_layers"], dtype=int)
        for s in range(start, end):
            for layer in schedule.layers_at(s):
                per_layer[layer] += 1
        np.testing.assert_array_equal(per_layer, drawn.sum(axis=0))


def test_relocation_rules_by_hand():
    # Nearest earlier step with room first.
    drawn = np.array([[0, 0], [0, 0], [1, 1], [0, 0]], dtype=bool)
    np.testing.assert_array_equal(_relocate_to_cap(drawn, 1), [[0, 0], [0, 1], [1, 0], [0, 0]])
    # No room earlier: nearest later step.
    drawn = np.array([[1, 1], [0, 0], [0, 0]], dtype=bool)
    np.testing.assert_array_equal(_relocate_to_cap(drawn, 1), [[1, 0], [0, 1], [0, 0]])
    # A layer never counts twice at one step: step 0 already holds layer 1 itself.
    drawn = np.array([[0, 1], [1, 1], [0, 0]], dtype=bool)
    np.testing.assert_array_equal(_relocate_to_cap(drawn, 1), [[0, 1], [1, 0], [0, 1]])


def test_realised_rate_close_to_rate():
    schedule = CompetitionSchedule(seed=7, num_layers=8, total_steps=21000, rate=0.07,
                                   warmup_fraction=0.02, max_compete_per_step=3)
    realised = schedule.realised_rate(range(schedule.warmup_steps, 21000))
    assert abs(realised - 0.07) < 0.05 * 0.07


@pytest.mark.parametrize("no_cap", [None, 0, -1])
def test_no_cap_equals_raw_draws(no_cap):
    schedule = CompetitionSchedule(**{**CFG, "max_compete_per_step": no_cap})
    steps = np.arange(250, 1500)
    drawn = uniform_draws(CFG["seed"], steps, CFG["num_layers"]) < CFG["rate"]
    got = np.array([[schedule.competes(int(s), l) for l in range(8)] for s in steps])
    np.testing.assert_array_equal(got, drawn)


def test_steps_past_total_keep_working():
    schedule = CompetitionSchedule(**{**CFG, "rate": 0.3})
    assert max(len(schedule.layers_at(s)) for s in range(5000, 7000)) <= 2
    assert schedule.realised_rate(range(5000, 7000)) > 0.2


def test_bad_layer_raises():
    with pytest.raises(IndexError):
        CompetitionSchedule(**CFG).competes(300, 8)
