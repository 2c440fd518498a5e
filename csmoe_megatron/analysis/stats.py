"""Small-sample statistics for the A/B report: mean with a 95% Student-t confidence interval,
and the (x, y) series of a run's metric records with linear interpolation between them.

No SciPy: the two-sided 95% t quantiles for 1-30 degrees of freedom are tabulated (4 decimals),
beyond that the Cornish-Fisher expansion around the normal quantile (error < 1e-4).
"""

from __future__ import annotations

import math

_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def mean_ci95(values: list[float]) -> dict:
    """{"mean", "std", "n", "ci95_half_width", "ci95": [lo, hi]}; with one value the interval is
    unknown (NaN half width), as it is: one seed says nothing about the spread."""
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0,
                "ci95_half_width": float("nan"), "ci95": [float("nan"), float("nan")]}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": float("nan"), "n": 1, "ci95_half_width": float("nan"),
                "ci95": [float("nan"), float("nan")]}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95_half_width": half,
            "ci95": [mean - half, mean + half]}


def paired_differences(arm: dict[int, float], baseline: dict[int, float]) -> dict:
    """Per-seed arm - baseline over the seeds both have, with mean_ci95 of the differences."""
    seeds = sorted(set(arm) & set(baseline))
    diffs = [arm[s] - baseline[s] for s in seeds]
    return {"seeds": seeds, "differences": diffs, **mean_ci95(diffs)}


def curve(records: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[key]) for r in records if key in r and x in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def interpolate(xs: list[float], ys: list[float], at: float) -> float:
    if not xs:
        return float("nan")
    if at <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= at <= x1:
            return y0 + (y1 - y0) * (at - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]
