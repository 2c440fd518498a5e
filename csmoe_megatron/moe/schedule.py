"""Which MoE layers run a competition step at which optimizer step (spec §4).

Every rank must take the same branch for a layer at a step, or expert/tensor/pipeline
collectives deadlock. The reference code draws the whole schedule on rank 0 and broadcasts
it; here the schedule is instead a pure, deterministic function of (seed, step, layer), so
every process (and a resumed run) computes the same answer without communication.

Design:
* Draws come from a counter-based hash (splitmix64 over seed, step, layer), not from a
  stateful RNG or Python's salted ``hash()``, so they are identical across processes, machines
  and resume (numpy only, no torch RNG). A draw competes when its uniform value is < ``rate``.
* Warm-up: no competition for steps < int(warmup_fraction * total_steps), as in the
  reference (whose schedule starts at the end of warm-up).
* Cap A_max: the reference moves an excess draw to the nearest earlier (else later) step
  that still has room, over the whole run. We do the same relocation but only inside a
  fixed-size block of steps (BLOCK_STEPS), so a step's answer needs just its own block.
  Blocks start at the end of warm-up; the block holding total_steps is cut there so no draw
  is moved past the end of the run; steps after total_steps continue in blocks of the same
  size. Layers are processed in order 0..L-1 (lower layers get first pick, as in the
  reference where layers register in order), each layer's draws in step order. A draw that
  finds no room anywhere in its block is dropped (only possible when rate*L nears the cap).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

BLOCK_STEPS = 1024
_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (array ops wrap silently, scalars would warn)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform_draws(seed: int, steps: np.ndarray, num_layers: int) -> np.ndarray:
    """Uniform [0, 1) values of shape [len(steps), num_layers], a pure function of
    (seed, step, layer)."""
    seed_key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    step_key = _splitmix64(seed_key ^ np.asarray(steps, dtype=np.uint64).reshape(-1))
    layers = np.arange(num_layers, dtype=np.uint64)
    layer_key = _splitmix64(layers + np.uint64(0x5851F42D4C957F2D))
    key = _splitmix64(step_key[:, None] ^ layer_key[None, :])
    return (key >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _relocate_to_cap(drawn: np.ndarray, cap: int) -> np.ndarray:
    """Apply the A_max cap to a block of draws [S, L] (bool): an excess draw moves to the
    nearest earlier step with room for that layer, else the nearest later one."""
    num_steps, num_layers = drawn.shape
    chosen = np.zeros_like(drawn)
    load = np.zeros(num_steps, dtype=np.int64)

    def has_room(step: int, layer: int) -> bool:
        # A layer can compete at most once per step, so its own earlier relocation blocks it.
        return load[step] < cap and not chosen[step, layer]

    for layer in range(num_layers):
        for step in np.flatnonzero(drawn[:, layer]):
            target = step if has_room(step, layer) else None
            if target is None:
                target = next((s for s in range(step - 1, -1, -1) if has_room(s, layer)), None)
            if target is None:
                target = next((s for s in range(step + 1, num_steps) if has_room(s, layer)), None)
            if target is not None:
                chosen[target, layer] = True
                load[target] += 1
    return chosen


class CompetitionSchedule:
    """Deterministic per-(step, layer) competition decisions (spec §4).

    Args:
        seed: schedule seed; all ranks must pass the same one.
        num_layers: number of MoE layers in the whole model (global MoE layer indices
            0..num_layers-1, not per pipeline stage).
        total_steps: planned number of optimizer steps (sets warm-up and the last block end).
        rate: omega, the probability that a layer competes at a post-warm-up step.
        warmup_fraction: fraction of total_steps with no competition.
        max_compete_per_step: A_max; None or <= 0 means no cap.
    Steps are 0-based optimizer steps.
    """

    _CACHE_BLOCKS = 4

    def __init__(
        self,
        seed: int,
        num_layers: int,
        total_steps: int,
        rate: float,
        warmup_fraction: float = 0.0,
        max_compete_per_step: int | None = None,
    ) -> None:
        if num_layers < 0 or total_steps < 0:
            raise ValueError("num_layers and total_steps must be >= 0")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}")
        self.seed = int(seed)
        self.num_layers = int(num_layers)
        self.total_steps = int(total_steps)
        self.rate = float(rate)
        self.warmup_steps = int(warmup_fraction * total_steps)
        capped = max_compete_per_step is not None and max_compete_per_step > 0
        self.cap = int(max_compete_per_step) if capped else None
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()

    def _block_start(self, step: int) -> int:
        """First step of the block holding ``step`` (step >= warmup_steps)."""
        if step < self.total_steps:
            return self.warmup_steps + (step - self.warmup_steps) // BLOCK_STEPS * BLOCK_STEPS
        tail_origin = max(self.total_steps, self.warmup_steps)
        return tail_origin + (step - tail_origin) // BLOCK_STEPS * BLOCK_STEPS

    def _block(self, start: int) -> np.ndarray:
        """Decisions [block_len, num_layers] for the block starting at ``start`` (cached)."""
        if start in self._blocks:
            self._blocks.move_to_end(start)
            return self._blocks[start]
        end = start + BLOCK_STEPS
        if start < self.total_steps:
            end = min(end, self.total_steps)
        drawn = uniform_draws(self.seed, np.arange(start, end), self.num_layers) < self.rate
        block = drawn if self.cap is None else _relocate_to_cap(drawn, self.cap)
        block.setflags(write=False)
        self._blocks[start] = block
        if len(self._blocks) > self._CACHE_BLOCKS:
            self._blocks.popitem(last=False)
        return block

    def layers_at(self, step: int) -> frozenset[int]:
        """Global MoE layer indices that run a competition step at optimizer ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps or self.num_layers == 0 or self.rate == 0.0:
            return frozenset()
        start = self._block_start(step)
        return frozenset(int(i) for i in np.flatnonzero(self._block(start)[step - start]))

    def competes(self, step: int, layer: int) -> bool:
        """True when global MoE layer ``layer`` runs a competition step at ``step``."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.num_layers})")
        return layer in self.layers_at(step)

    def realised_rate(self, steps: range) -> float:
        """Fraction of (step, layer) pairs in ``steps`` that compete."""
        if len(steps) == 0 or self.num_layers == 0:
            return 0.0
        hits = sum(len(self.layers_at(s)) for s in steps)
        return hits / (len(steps) * self.num_layers)
