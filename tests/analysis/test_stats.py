"""Student-t intervals and paired differences of the A/B report, against hand computations."""

import math

import pytest

from csmoe_megatron.analysis.stats import mean_ci95, paired_differences, t_quantile_975


def test_t_quantiles_table_and_expansion():
    assert t_quantile_975(2) == pytest.approx(4.3027)
    assert t_quantile_975(30) == pytest.approx(2.0423)
    # Beyond the table: the expansion continues it smoothly toward the normal 1.96.
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=2e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_ci95_by_hand():
    # 1, 2, 3: mean 2, sample std 1, half width t(2) * 1 / sqrt(3).
    stat = mean_ci95([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["std"] == pytest.approx(1.0) and stat["n"] == 3
    assert stat["ci95_half_width"] == pytest.approx(4.3027 / math.sqrt(3))
    assert stat["ci95"] == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)])
    one = mean_ci95([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["ci95_half_width"])


def test_paired_differences_use_common_seeds_only():
    arm = {1: 3.0, 2: 3.5, 3: 4.0, 4: 9.0}
    base = {1: 2.5, 2: 3.0, 3: 3.0}
    d = paired_differences(arm, base)
    assert d["seeds"] == [1, 2, 3] and d["differences"] == [0.5, 0.5, 1.0]
    assert d["mean"] == pytest.approx(2 / 3)
    std = math.sqrt(((0.5 - 2 / 3) ** 2 * 2 + (1 - 2 / 3) ** 2) / 2)
    assert d["ci95_half_width"] == pytest.approx(4.3027 * std / math.sqrt(3))
