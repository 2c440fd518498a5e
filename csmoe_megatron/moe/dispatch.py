"""megatron-core token dispatchers with a dense mode for competition steps.

On a competition step every token goes to every expert (an all-ones routing map, unit
probabilities, so the experts return ungated g_i(x)) through megatron's own communication,
and the combine returns per-(token, expert) outputs [T, E, H] instead of their sum.

Dense mode is dropless and unfused whatever the run's MoE options: capacity factor,
pad-to-capacity, router padding and fused permute all assume a fixed top-K per token. The
dispatcher swaps in a private copy of its config with those options off (and top-K = E, the
dropless output size megatron computes as tokens x topk) for the duration of the step. Capacity
limits therefore never apply to competition steps (documented choice: competition is always
dropless, so every expert is scored on every token).

* alltoall: after the combine all-to-all (and the expert-TP reduce-scatter, so rows are full
  hidden width) the rows back on the source rank are in routing_map.T order, i.e. expert-major
  [E, T, H]; no extra communication. This is combine "full"; combine "winners"
  (winners_combine.py) stops after combine_preprocess and brings back only affinities and
  the winners' rows.
* allgather: megatron sums the local experts' outputs in combine_preprocess; dense mode instead
  places them in a zero [T_global, E, H] buffer at the local experts' columns and the usual
  reduce-scatter over TPxEP returns [T_local, E*H] (EP ranks fill disjoint columns, expert-TP
  ranks add their partial fc2 sums). It moves E x H values per token instead of H.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from megatron.core.transformer.moe.token_dispatcher import (
    MoEAllGatherTokenDispatcher,
    MoEAlltoAllTokenDispatcher,
)


def dense_config(config):
    """A copy of the TransformerConfig for dropless, unfused every-expert dispatch.
    copy.copy skips TransformerConfig.__post_init__ (these fields are plain values)."""
    dense = copy.copy(config)
    dense.moe_router_topk = config.num_moe_experts
    dense.moe_expert_capacity_factor = None
    dense.moe_pad_expert_input_to_capacity = False
    dense.moe_router_padding_for_quantization = False
    dense.moe_permute_fusion = False
    return dense


class _DenseMode:
    """Mixin: `with dispatcher.dense_mode(): ...` routes through the dense path."""

    def _init_dense(self) -> None:
        self.dense = False
        self._dense_config = dense_config(self.config)

    @contextlib.contextmanager
    def dense_mode(self):
        saved = (self.config, getattr(self, "drop_and_pad", None))
        self.dense, self.config = True, self._dense_config
        if hasattr(self, "drop_and_pad"):
            self.drop_and_pad = False
        try:
            yield self
        finally:
            self.dense, self.config = False, saved[0]
            if saved[1] is not None:
                self.drop_and_pad = saved[1]


class CompetitionAlltoAllDispatcher(_DenseMode, MoEAlltoAllTokenDispatcher):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_dense()

    def combine_postprocess(self, permutated_local_input_tokens):
        if not self.dense:
            return super().combine_postprocess(permutated_local_input_tokens)
        num_tokens, hidden = self.hidden_shape_before_permute
        rows = permutated_local_input_tokens.view(self.num_experts, num_tokens, hidden)
        return rows.transpose(0, 1)  # [T, E, H]


class CompetitionAllGatherDispatcher(_DenseMode, MoEAllGatherTokenDispatcher):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_dense()
        self.num_experts = self.config.num_moe_experts

    def combine_preprocess(self, hidden_states):
        if not self.dense:
            return super().combine_preprocess(hidden_states)
        global_tokens, hidden = self.hidden_shape_before_permute
        local = hidden_states.view(self.num_local_experts, global_tokens, hidden).transpose(0, 1)
        first = self.local_expert_indices[0]
        after = self.num_experts - first - self.num_local_experts
        pairs = F.pad(local, (0, 0, first, after))  # [T_global, E, H], zero off local experts
        return pairs.reshape(global_tokens, self.num_experts * hidden)

    def combine_postprocess(self, hidden_states):
        if not self.dense:
            return super().combine_postprocess(hidden_states)
        return hidden_states.view(-1, self.num_experts, self.hidden_shape[-1])  # [T, E, H]


def build_dispatcher(num_local_experts, local_expert_indices, config, pg_collection):
    kind = config.moe_token_dispatcher_type
    cls = {"alltoall": CompetitionAlltoAllDispatcher,
           "allgather": CompetitionAllGatherDispatcher}.get(kind)
    if cls is None:
        raise ValueError(f"CompeteSMoE supports the alltoall and allgather token dispatchers, "
                         f"not {kind!r}")
    return cls(num_local_experts, local_expert_indices, config=config,
               pg_collection=pg_collection)


def unit_routing(num_tokens: int, num_experts: int, like: torch.Tensor):
    """All-ones routing map and unit probabilities: every expert on every token, ungated."""
    routing_map = torch.ones(num_tokens, num_experts, dtype=torch.bool, device=like.device)
    probs = torch.ones(num_tokens, num_experts, dtype=like.dtype, device=like.device)
    return probs, routing_map
