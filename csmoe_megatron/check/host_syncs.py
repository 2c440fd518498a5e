"""Counts of host reads of device data, by training step and call site.

On a GPU each of these stalls the host until the device catches up (and with it every rank
waiting in the next collective). The emulated CUDA layer records them here; the step is
the CompeteSMoE context's current optimizer step (None outside training steps).
"""

from __future__ import annotations

from collections import Counter

from .where import site

_COUNTS: Counter = Counter()  # (step, kind, site) -> count


def record(kind: str) -> None:
    from ..moe import context

    _COUNTS[(context.current_step(), kind, site(depth=2))] += 1


def per_step(step: int) -> Counter:
    """(kind, site) -> count during optimizer step `step` (0-based)."""
    return Counter({(kind, where): n for (s, kind, where), n in _COUNTS.items() if s == step})


def as_rows() -> list[dict]:
    return [{"step": s, "kind": kind, "site": where, "count": n}
            for (s, kind, where), n in sorted(_COUNTS.items(), key=lambda kv: str(kv[0]))]


def reset() -> None:
    _COUNTS.clear()
