"""The dense test oracle (tests/moe/dense_oracle.py, spec §1-§3) against naive per-token loops."""
import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.moe import dense_oracle
from tests.moe.dense_oracle import MLPExpert, OracleConfig, oracle_moe_forward

T, H, FFN, E = 7, 6, 5, 4


def _experts(gated: bool = False, seed: int = 0) -> list[MLPExpert]:
    gen = torch.Generator().manual_seed(seed)
    fc1_rows = 2 * FFN if gated else FFN
    return [
        MLPExpert(
            fc1_weight=torch.randn(fc1_rows, H, generator=gen, dtype=torch.float64),
            fc2_weight=torch.randn(H, FFN, generator=gen, dtype=torch.float64) / 3,
            activation=F.silu if gated else F.gelu,
            gated_linear_unit=gated,
        )
        for _ in range(E)
    ]


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(T, H, generator=gen, dtype=torch.float64),
            torch.randn(E, H, generator=gen, dtype=torch.float64))


def _naive_router_step(x, router_weight, experts, top_k):
    rows = []
    for token in x:
        probs = torch.softmax(router_weight @ token, dim=-1)
        chosen = torch.topk(probs, top_k).indices
        weights = probs[chosen] / probs[chosen].sum()
        rows.append(sum(w * experts[int(i)](token) for w, i in zip(weights, chosen)))
    return torch.stack(rows)


def _naive_competition_step(x, experts, top_k, norm="sum"):
    rows = []
    for token in x:
        outs = [expert(token) for expert in experts]
        scores = torch.stack([F.softplus(out).mean() for out in outs])
        chosen = torch.topk(scores, top_k).indices
        picked = scores[chosen] if norm == "sum" else torch.sigmoid(scores[chosen])
        weights = picked / picked.sum()
        rows.append(sum(w * outs[int(i)] for w, i in zip(weights, chosen)))
    return torch.stack(rows)


@pytest.mark.parametrize("top_k", [1, 2, E])
@pytest.mark.parametrize("gated", [False, True])
def test_router_step_matches_naive_loop(top_k, gated):
    x, router_weight = _inputs()
    experts = _experts(gated)
    result = oracle_moe_forward(x, router_weight, experts, top_k, compete=False)
    expected = _naive_router_step(x, router_weight, experts, top_k)
    torch.testing.assert_close(result["output"], expected)
    assert result["affinity"] is None
    assert result["winners_mask"].sum(-1).eq(top_k).all()
    torch.testing.assert_close(result["gates"].sum(-1), torch.ones(T, dtype=torch.float64))
    assert set(result["losses"]) == {"balance"}


@pytest.mark.parametrize("top_k", [1, 2, E])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("norm", ["sum", "sigmoid"])
def test_competition_step_matches_naive_loop(top_k, gated, norm):
    x, router_weight = _inputs()
    experts = _experts(gated)
    cfg = OracleConfig(gate_norm=norm)
    result = oracle_moe_forward(x, router_weight, experts, top_k, compete=True, cfg=cfg)
    torch.testing.assert_close(result["output"], _naive_competition_step(x, experts, top_k, norm))
    assert set(result["losses"]) == {"distillation", "diversity", "competition_balance"}


def test_top_k_equals_num_experts_uses_all():
    x, router_weight = _inputs()
    experts = _experts()
    dense = torch.stack([expert(x) for expert in experts], dim=1)
    routed = oracle_moe_forward(x, router_weight, experts, E, compete=False)
    expected = (torch.softmax(x @ router_weight.T, -1).unsqueeze(-1) * dense).sum(1)
    torch.testing.assert_close(routed["output"], expected)
    competed = oracle_moe_forward(x, router_weight, experts, E, compete=True)
    assert competed["winners_mask"].all()


def test_gated_expert_is_megatron_glu():
    expert = _experts(gated=True)[0]
    x, _ = _inputs()
    hidden = x @ expert.fc1_weight.T
    expected = (F.silu(hidden[:, :FFN]) * hidden[:, FFN:]) @ expert.fc2_weight.T
    torch.testing.assert_close(expert(x), expected)


def test_competition_router_learns_only_from_distillation():
    x, router_weight = _inputs()
    x.requires_grad_(True)
    router_weight.requires_grad_(True)
    experts = _experts()
    result = oracle_moe_forward(x, router_weight, experts, 2, compete=True)
    (grad_from_output,) = torch.autograd.grad(result["output"].sum(), router_weight,
                                              allow_unused=True)
    assert grad_from_output is None
    (grad_from_aux,) = torch.autograd.grad(result["aux_loss"], router_weight)
    assert grad_from_aux.abs().sum() > 0


def test_router_step_z_loss_option():
    x, router_weight = _inputs()
    cfg = OracleConfig(z_loss_coef=1e-3)
    result = oracle_moe_forward(x, router_weight, _experts(), 2, compete=False, cfg=cfg)
    expected = 0.01 * result["losses"]["balance"] + 1e-3 * result["losses"]["z_loss"]
    torch.testing.assert_close(result["aux_loss"], expected)


def test_oracle_gates_are_normalised_over_the_winners_only():
    affinity = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    gates, winners = dense_oracle.competition_gates(affinity, 2)
    torch.testing.assert_close(gates, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]], dtype=torch.float64))
    assert winners.tolist() == [[True, True, False, False]]


def test_oracle_losses_on_hand_computed_cases():
    # Two identical winners: cosine 1; orthogonal: 0.
    same = torch.tensor([[[1.0, 2.0], [2.0, 4.0]]])
    orth = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    assert float(dense_oracle.diversity_loss(same, "pairs")) == pytest.approx(1.0)
    assert float(dense_oracle.diversity_loss(same)) == pytest.approx(0.5)  # 2 of K*K=4 entries
    assert float(dense_oracle.diversity_loss(orth)) == pytest.approx(0.0)
    # Uniform probabilities and a perfectly balanced assignment: the Switch loss is 1.
    probs = torch.full((4, 4), 0.25)
    assigned = torch.eye(4, dtype=torch.bool)
    assert float(dense_oracle.switch_balance(probs, assigned, 1)) == pytest.approx(1.0)
    # Router already equal to the target: no distillation loss.
    logits = torch.tensor([[0.1, 0.7, -0.3]])
    winners = dense_oracle.top_k_mask(logits, 1)
    assert float(dense_oracle.distillation_loss(logits, logits, winners, 1, 0.1)) == 0.0
    # softplus mean: s(0) = log 2.
    assert float(dense_oracle.neural_response(torch.zeros(1, 1, 5))) == pytest.approx(0.693147, abs=1e-6)


def test_oracle_imports_nothing_from_the_package():
    """Its independence is the point: a shared helper would hide a shared bug."""
    tree = ast.parse(Path(dense_oracle.__file__).read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert names and not [n for n in names if n.split(".")[0] == "csmoe_megatron"], names
