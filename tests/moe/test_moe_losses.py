"""CompeteSMoE losses and routing metrics (spec §2-§3) against hand-checked values."""
import math

import pytest
import torch
import torch.nn.functional as F

from csmoe_megatron.moe.losses import (
    competition_balance_loss,
    diversity_loss,
    router_distillation_loss,
    routing_agreement,
    switch_balance_loss,
    z_loss,
)


def test_distillation_by_hand():
    logits = torch.tensor([[0.0, 0.0]])  # s^R = [1/2, 1/2]
    aff = torch.tensor([[0.0, math.log(3.0)]])  # s^C = [1/4, 3/4]
    winners = torch.tensor([[False, True]])
    loss = router_distillation_loss(logits, aff, winners, top_k=1, alpha=0.2)
    torch.testing.assert_close(loss, torch.tensor(1 / 16 + 0.2 * 1 / 16))


def test_distillation_matches_reference_hybrid_reduction():
    torch.manual_seed(0)
    logits, aff = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    idx = aff.topk(2, dim=-1).indices
    winners = torch.zeros_like(aff, dtype=torch.bool).scatter(-1, idx, True)
    s_r, s_c = logits.softmax(-1), aff.softmax(-1)
    expected = F.mse_loss(s_r, s_c) + 0.1 * F.mse_loss(s_r.gather(-1, idx), s_c.gather(-1, idx))
    torch.testing.assert_close(router_distillation_loss(logits, aff, winners, 2, 0.1), expected)


def test_distillation_grad_only_to_router_logits():
    logits = torch.randn(4, 3, requires_grad=True)
    aff = torch.randn(4, 3, requires_grad=True)
    winners = torch.zeros(4, 3, dtype=torch.bool).scatter(-1, aff.topk(1).indices, True)
    loss = router_distillation_loss(logits, aff, winners, top_k=1, alpha=0.1)
    grad_logits, grad_aff = torch.autograd.grad(loss, [logits, aff], allow_unused=True)
    assert grad_aff is None and grad_logits.abs().sum() > 0


def test_diversity_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    outs = torch.stack([e1, 3 * e1, e2])[None]  # pairs: cos 1, 0, 0
    torch.testing.assert_close(diversity_loss(outs, "pairs"), torch.tensor(1 / 3))


def test_diversity_matches_pair_loop():
    torch.manual_seed(1)
    outs = torch.randn(5, 4, 7, dtype=torch.float64)
    pairs = [F.cosine_similarity(outs[:, i], outs[:, j], dim=-1)
             for i in range(4) for j in range(i + 1, 4)]
    torch.testing.assert_close(diversity_loss(outs, "pairs"), torch.stack(pairs).mean())


def test_diversity_single_winner_is_zero_and_backprops():
    outs = torch.randn(3, 1, 4, requires_grad=True)
    loss = diversity_loss(outs)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(outs.grad == 0)


def test_switch_balance_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    routing = torch.tensor([[True, False], [True, False]])
    torch.testing.assert_close(switch_balance_loss(probs, routing, top_k=1), torch.tensor(2 * 0.65))
    uniform = torch.full((4, 4), 0.25)
    balanced = torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(switch_balance_loss(uniform, balanced, top_k=1), torch.tensor(1.0))


def test_competition_balance_is_switch_on_affinity_softmax():
    aff = torch.randn(6, 4)
    winners = torch.zeros(6, 4, dtype=torch.bool).scatter(-1, aff.topk(2).indices, True)
    torch.testing.assert_close(competition_balance_loss(aff, winners, 2, "all"),
                               switch_balance_loss(aff.softmax(-1), winners, 2))


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # logsumexp: log 2, log 4
    expected = torch.tensor((math.log(2) ** 2 + math.log(4) ** 2) / 2)
    torch.testing.assert_close(z_loss(logits), expected)


@pytest.mark.filterwarnings("ignore")
def test_consistent_with_megatron_core():
    moe_utils = pytest.importorskip("megatron.core.transformer.moe.moe_utils")
    torch.manual_seed(2)
    logits = torch.randn(10, 6)
    probs = logits.softmax(-1)
    routing = torch.zeros(10, 6, dtype=torch.bool).scatter(-1, logits.topk(2).indices, True)
    expected = moe_utils.switch_load_balancing_loss_func(
        probs, routing.sum(0), total_num_tokens=10, topk=2, num_experts=6, moe_aux_loss_coeff=1.0)
    torch.testing.assert_close(switch_balance_loss(probs, routing, 2), expected)
    torch.testing.assert_close(z_loss(logits), moe_utils.z_loss_func(logits, 1.0))


def test_routing_agreement_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 2.0, 1.0]])
    winners = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    agreement = routing_agreement(logits, winners, top_k=2)
    torch.testing.assert_close(agreement.exact_match, torch.tensor(1 / 3))
    torch.testing.assert_close(agreement.slot_overlap, torch.tensor((1.0 + 0.0 + 0.5) / 3))


# Conventions (docs/competesmoe.md): the authors' code is the default, ours a named option.

def test_diversity_authors_matrix_mean_by_hand():
    # One token, K = 3 winners e1, 3*e1, e2: cosines (1,2)=1, (1,3)=0, (2,3)=0.
    # Authors: K x K matrix with zero diagonal, mean over 9 entries: (1 + 1) / 9.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    outs = torch.stack([e1, 3 * e1, e2])[None]
    torch.testing.assert_close(diversity_loss(outs), torch.tensor(2 / 9))
    torch.testing.assert_close(diversity_loss(outs, "matrix"), torch.tensor(2 / 9))
    # Two tokens average: second token all orthogonal -> 0; mean (2/9 + 0) / 2.
    ortho = torch.stack([e1, e2, torch.zeros(2) + torch.tensor([0.0, -1.0])])[None]
    # cosines: (e1,e2)=0, (e1,-e2)=0, (e2,-e2)=-1 -> matrix sum -2, / 9.
    both = torch.cat([outs, ortho])
    torch.testing.assert_close(diversity_loss(both), torch.tensor((2 / 9 - 2 / 9) / 2))
    with pytest.raises(ValueError, match="matrix"):
        diversity_loss(outs, "mean")


def test_competition_balance_top1_by_hand():
    # E = 2, T = 2, K = 2 winners each (every expert wins once per token in "all").
    # Affinities: token 0 prefers expert 0, token 1 prefers expert 0 too.
    aff = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    # softmax rows: [0.75, 0.25] and [0.5, 0.5] -> P = [0.625, 0.375].
    winners = torch.ones(2, 2, dtype=torch.bool)
    # top1: argmax rows -> expert 0 (token 0), expert 0 (token 1, tie -> first) -> f = [1, 0];
    # loss = E * sum f_e P_e = 2 * 0.625 = 1.25.
    torch.testing.assert_close(competition_balance_loss(aff, winners, 2), torch.tensor(1.25))
    # all: f = [2, 2] / (T*K = 4) = [0.5, 0.5]; loss = 2 * (0.5*0.625 + 0.5*0.375) = 1.0.
    torch.testing.assert_close(competition_balance_loss(aff, winners, 2, "all"),
                               torch.tensor(1.0))
    with pytest.raises(ValueError, match="top1"):
        competition_balance_loss(aff, winners, 2, "slots")


def test_competition_balance_counts_feed_megatron_switch_loss():
    # The layer hands these counts to megatron's switch_load_balancing_loss_func; with
    # (counts, slots) it must give the same number as the hand formula above.
    from megatron.core.transformer.moe.moe_utils import switch_load_balancing_loss_func

    from csmoe_megatron.moe.losses import competition_balance_counts

    aff = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    winners = torch.ones(2, 2, dtype=torch.bool)
    for count, expected in (("top1", 1.25), ("all", 1.0)):
        counts, slots = competition_balance_counts(aff, winners, 2, count)
        loss = switch_load_balancing_loss_func(
            probs=aff.softmax(-1), tokens_per_expert=counts, total_num_tokens=counts.sum() / slots,
            topk=slots, num_experts=2, moe_aux_loss_coeff=1.0)
        torch.testing.assert_close(loss, torch.tensor(expected))
