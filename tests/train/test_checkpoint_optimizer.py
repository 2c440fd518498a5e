"""The optimizer's param groups saved by one layout's ChainedOptimizer are rebuilt for another's
(fit_common): EP=2 saves a dense and an expert member, EP=1 has one member holding both."""

import pytest

from csmoe_megatron.train.checkpoint_files import CheckpointError
from csmoe_megatron.train.checkpoint_optimizer import fit_common


class Member:
    """What fit_common reads of a megatron optimizer: its param groups."""

    def __init__(self, *groups):
        self.param_groups = [dict(g) for g in groups]


class Chain:
    def __init__(self, *members):
        self.chained_optimizers = list(members)


def group(wd_mult: float, expert: bool, **extra) -> dict:
    return {"wd_mult": wd_mult, "lr_mult": 1.0, "is_expert_parallel": expert,
            "is_decoupled_lr": False, **extra}


def saved(*members) -> dict:
    """common.pt's "optimizer" entry of a DistributedOptimizer chain."""
    states = [{"optimizer": {"param_groups": list(m)}, "param_state_sharding_type": "x"}
              for m in members]
    return states[0] if len(states) == 1 else dict(enumerate(states))


DENSE_WD, DENSE_NO_WD = group(1.0, False, step=7.0), group(0.0, False, step=7.0)
EXPERT_WD = group(1.0, True, step=7.0)


def test_a_dense_and_an_expert_member_fold_into_one():
    fitted = fit_common(saved([DENSE_WD, DENSE_NO_WD], [EXPERT_WD]),
                        Chain(Member(group(0.0, False), group(1.0, False))), "ckpt")
    # One member: megatron reads it as a single optimizer's state, groups in its own order.
    assert fitted["optimizer"]["param_groups"] == [DENSE_NO_WD, DENSE_WD]
    assert fitted["param_state_sharding_type"] == "x"


def test_one_member_splits_into_a_dense_and_an_expert_member():
    fitted = fit_common(saved([DENSE_WD, DENSE_NO_WD]),
                        Chain(Member(group(1.0, False), group(0.0, False)),
                              Member(group(1.0, True))), "ckpt")
    assert sorted(fitted) == [0, 1]
    assert fitted[0]["optimizer"]["param_groups"] == [DENSE_WD, DENSE_NO_WD]
    # The expert group takes the dense group's hyper-parameters (Adam's step among them).
    assert fitted[1]["optimizer"]["param_groups"] == [{**DENSE_WD, "is_expert_parallel": True}]


def test_plain_optimizer_groups_are_fitted_too():
    plain = {"param_groups": [DENSE_WD], "state": {}}
    fitted = fit_common(plain, Chain(Member(group(1.0, True))), "ckpt")
    assert fitted["param_groups"] == [{**DENSE_WD, "is_expert_parallel": True}]
    assert fitted["state"] == {}


def test_a_group_the_checkpoint_lacks_is_a_clear_error():
    with pytest.raises(CheckpointError, match="ckpt: no optimizer param group for .*'lr_mult': 2.0"):
        fit_common(saved([DENSE_WD]), Chain(Member({**DENSE_WD, "lr_mult": 2.0})), "ckpt")
