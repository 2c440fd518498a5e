"""Seeded byte mutations for the fuzz tests: truncate, flip bytes, swap two chunks, in the
header (first 64 bytes) or anywhere in the body. Every mutation changes the bytes."""

from __future__ import annotations

import random


def mutations(data: bytes, seed: int, count: int):
    """`count` (description, mutated bytes) pairs, the same for the same seed."""
    rng = random.Random(seed)
    kinds = ["truncate", "flip_header", "flip_body", "swap"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        out = bytearray(data)
        if kind == "truncate":
            cut = rng.randrange(0, len(data))
            out = out[:cut]
            what = f"truncate at {cut}"
        elif kind.startswith("flip"):
            span = min(64, len(data)) if kind == "flip_header" else len(data)
            spots = sorted(rng.randrange(span) for _ in range(rng.randint(1, 4)))
            for spot in spots:
                out[spot] ^= rng.randrange(1, 256)
            what = f"{kind} at {spots}"
        else:
            size = rng.randint(1, max(1, len(data) // 8))
            a, b = sorted(rng.sample(range(0, len(data) - size + 1), 2)) if len(data) > 2 * size \
                else (0, len(data) - size)
            if a + size > b:  # overlapping or equal chunks: flip instead, so bytes change
                out[a] ^= 0xFF
            else:
                out[a:a + size], out[b:b + size] = data[b:b + size], data[a:a + size]
            what = f"swap {size} bytes at {a} and {b}"
        if bytes(out) == data:  # a swap of identical chunks
            out[0] ^= 0xFF
            what += " (+flip at 0)"
        yield what, bytes(out)
