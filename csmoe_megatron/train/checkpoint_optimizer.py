"""The optimizer's side of a checkpoint: the format its state is saved in, and what megatron-core
0.16 (without Apex/TE) needs around a load.

Since checkpoints record their layout (OPTIMIZER_FORMAT), optimizer tensors are keyed by model
parameter in the parameter's global shape, so they load on any layout. The param groups (Adam's
step, betas, eps, lr, weight decay: the same on every rank) are saved once, in common.pt, in the
saving layout's ChainedOptimizer structure, and that structure depends on the layout: with
parallel.expert=1 the expert weights are ordinary data-parallel parameters and join the dense
member. fit_common rebuilds them in this launch's structure: each member gets, for each of its
groups, the saved group with the same identity (wd_mult, lr_mult, is_expert_parallel,
is_decoupled_lr), else the one that differs only in is_expert_parallel.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from megatron.core.optimizer.optimizer import param_group_identifier_keys

from .checkpoint_files import CheckpointError, SafeCommonLoadStrategy

# How optimizer state is laid out in the checkpoint (recorded in progress.json, read back at
# load). Since checkpoints record their layout: every optimizer tensor keyed by the model
# parameter it belongs to, in the parameter's own (global) shape, and no per-optimizer prefix
# (megatron's dense/expert ChainedOptimizer split), so a resume may change TP/SP/PP/VPP/EP/ETP
# and the DP size (train/layout.py). For the distributed optimizer this is megatron's
# 'fully_reshardable': at a save each DP group all-gathers its optimizer shards (for a moment
# every rank holds the full fp32 state of its model-parallel shard); at a load each rank reads
# that state and keeps its own slice. ('fully_sharded_model_space', which needs no gather,
# is refused by megatron-core 0.16: flattened ShardedTensors are no longer supported.)
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable",
                    "chained_optim_avoid_prefix": True}
# Before: megatron-LM's default, bound to the DP layout of each model-parallel shard.
LEGACY_OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}

_EXPERT = param_group_identifier_keys.index("is_expert_parallel")


def _members(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _identity(group: dict) -> tuple:
    return tuple(group[k] if k in group else group.get(f"pre_{k}")
                 for k in param_group_identifier_keys)


def _groups_holder(state: dict) -> dict:
    """The dict holding "param_groups": the DistributedOptimizer nests it under "optimizer"."""
    return state["optimizer"] if isinstance(state.get("optimizer"), dict) else state


def _saved_members(common_optimizer: dict) -> list[dict]:
    if common_optimizer and all(isinstance(k, int) for k in common_optimizer):
        return [common_optimizer[k] for k in sorted(common_optimizer)]
    return [common_optimizer]


def _matching(saved_groups: list[dict], needed: tuple, where: str) -> dict:
    for group in saved_groups:
        if _identity(group) == needed:
            return copy.deepcopy(group)
    for group in saved_groups:
        ident = _identity(group)
        if ident[:_EXPERT] + ident[_EXPERT + 1:] == needed[:_EXPERT] + needed[_EXPERT + 1:]:
            fitted = copy.deepcopy(group)
            fitted["is_expert_parallel"] = needed[_EXPERT]
            return fitted
    named = dict(zip(param_group_identifier_keys, needed))
    raise CheckpointError(f"{where}: no optimizer param group for {named} (the checkpoint has "
                          f"{[_identity(g) for g in saved_groups]})")


def fit_common(common_optimizer: dict, optimizer, where: str) -> dict:
    """common.pt's "optimizer" entry rebuilt for `optimizer` (a ChainedOptimizer or one member),
    groups in the member's own order (megatron merges the per-rank "params" lists by index)."""
    saved = _saved_members(common_optimizer)
    saved_groups = [g for member in saved for g in _groups_holder(member).get("param_groups", [])]
    fitted = []
    for member in _members(optimizer):
        state = copy.deepcopy(saved[0])
        _groups_holder(state)["param_groups"] = [
            _matching(saved_groups, _identity(g), where) for g in member.param_groups]
        fitted.append(state)
    return fitted[0] if len(fitted) == 1 else dict(enumerate(fitted))


class FittedCommonLoad(SafeCommonLoadStrategy):
    """common.pt with the optimizer's param groups rebuilt for this launch's optimizer chain
    (fit_common), which may differ from the saving layout's."""

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer

    def load_common(self, checkpoint_dir):
        common = super().load_common(checkpoint_dir)
        if isinstance(common.get("optimizer"), dict):
            common["optimizer"] = fit_common(common["optimizer"], self.optimizer,
                                             f"{checkpoint_dir}/common.pt")
        return common


def materialise_optimizer_state(optimizer) -> None:
    """Without Apex/TE, megatron's DistributedOptimizer.state_dict() needs Adam state to exist
    (it reads each param's 'step'), which torch creates only at the first step. Use megatron's
    own dummy-step initialiser; the loaded checkpoint then overwrites params and state."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in _members(optimizer):
        if isinstance(opt, DistributedOptimizer) and len(opt.optimizer.state) == 0:
            opt._init_optimizer_states_with_dummy_values()


def restore_adam_step(optimizer) -> None:
    """torch.optim.Adam keeps its step count per parameter; megatron's DistributedOptimizer
    (without Apex/TE) restores it only into param_groups["step"], leaving the per-parameter
    count at the dummy step's 1, which changes bias correction after a resume. Copy it back."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in _members(optimizer):
        if not isinstance(opt, DistributedOptimizer):
            continue
        for group in opt.optimizer.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = opt.optimizer.state.get(param)
                if state and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype)


@contextlib.contextmanager
def adam_steps_set_aside(optimizer):
    """megatron's fully_reshardable load (without Apex/TE) copies every per-parameter entry of
    torch Adam's state from the checkpoint, 'step' included, which it never saves (KeyError).
    For that copy the steps are taken out and then put back (load_state_dict has just set them
    from the param groups); the wrap is on these instances only and is removed after."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    wrapped = [opt for opt in _members(optimizer)
               if isinstance(opt, DistributedOptimizer)]
    for opt in wrapped:
        def load_param_state(state_dict, _opt=opt,
                             _load=opt.load_parameter_state_from_fully_reshardable):
            aside = [(s, s.pop("step")) for s in _opt.optimizer.state.values() if "step" in s]
            try:
                _load(state_dict)
            finally:
                for state, step in aside:
                    state["step"] = step
        opt.load_parameter_state_from_fully_reshardable = load_param_state
    try:
        yield
    finally:
        for opt in wrapped:
            del opt.load_parameter_state_from_fully_reshardable
