"""The optimizer's hyper-parameter groups of a checkpoint, fitted to this launch's optimizer.

megatron-core splits the optimizer into a ChainedOptimizer of a dense and an expert member, and
the split depends on the layout: with parallel.expert=1 the expert weights are ordinary
data-parallel parameters and join the dense member. Optimizer tensors are saved keyed by model
parameter (checkpoint.OPTIMIZER_FORMAT), so they load on any layout; the param groups (Adam's
step, betas, eps, lr, weight decay: the same on every rank) are saved once, in common.pt, in the
saving layout's chain structure. fit_common rebuilds them in this launch's structure: each
member gets, for each of its groups, the saved group with the same identity (wd_mult, lr_mult,
is_expert_parallel, is_decoupled_lr), else the one that differs only in is_expert_parallel.
"""

from __future__ import annotations

import copy

from megatron.core.optimizer.optimizer import param_group_identifier_keys

from .checkpoint_files import CheckpointError

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
    raise CheckpointError(f"{where}: no optimizer param group for {dict(zip(param_group_identifier_keys, needed))}"
                          f" (the checkpoint has {[_identity(g) for g in saved_groups]})")


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
