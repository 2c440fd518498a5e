"""Layout-invariant weight initialisation: the same seed gives the same model on any layout.

megatron-core initialises each rank's shard from that rank's RNG stream, so EP=1 and EP=2 (or
TP=1 and TP=2) start from different weights and cannot be compared step by step. Here every
parameter is re-drawn from its *global* identity instead: the checkpoint metadata
(`sharded_state_dict`) says which global tensor a local shard belongs to (key, layer/expert
index, offset); we draw that global tensor from a generator seeded by (seed, key, index) and
keep our slice. Init rules follow megatron's: normal(0, std) for weights, std/sqrt(2*layers) for
output projections (linear_proj, linear_fc2), norms untouched (ones).
"""

from __future__ import annotations

import hashlib
import math

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
from megatron.core.dist_checkpointing.dict_utils import nested_values


def _generator_seed(seed: int, key: str, index: tuple) -> int:
    digest = hashlib.sha256(f"{seed}|{key}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _std_for(key: str, std: float, num_layers: int) -> float | None:
    if "norm" in key:
        return None  # norms keep their ones
    if "linear_proj" in key or "linear_fc2" in key:
        return std / math.sqrt(2.0 * num_layers)
    return std


@torch.no_grad()
def init_layout_invariant(model_chunks, seed: int, std: float, num_layers: int) -> int:
    """Re-initialise every sharded parameter of the (unwrapped) chunks; returns how many."""
    count = 0
    for chunk in model_chunks:
        sharded = chunk.sharded_state_dict()
        apply_factories(sharded)  # GLU fc1: [gate; up] halves become separate global tensors
        for st in nested_values(sharded):
            # ShardedTensors of a model are views of its parameters (GLU halves included).
            if not isinstance(st, ShardedTensor):
                continue
            scale = _std_for(st.key, std, num_layers)
            if scale is None:
                continue
            _fill_shard(st, seed, scale)
            count += 1
    return count


def _fill_shard(st: ShardedTensor, seed: int, std: float) -> None:
    p = st.prepend_axis_num
    index = tuple(st.global_offset[:p])  # layer / expert position: part of the identity
    shape = tuple(st.global_shape[p:])
    gen = torch.Generator(device="cpu").manual_seed(_generator_seed(seed, st.key, index))
    full = torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
    slices = tuple(slice(o, o + n) for o, n in zip(st.global_offset[p:], st.local_shape))
    st.data.copy_(full[slices].reshape(st.data.shape).to(st.data.dtype))
