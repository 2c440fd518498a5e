"""Neural response and competition gates (spec §1)."""
import math

import pytest
import torch

from csmoe_megatron.moe.affinity import gates_from_affinity, neural_response


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_neural_response_by_hand():
    out = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]], dtype=torch.float64)  # [T=1, E=2, D=2]
    expected = torch.tensor([[math.log(2.0), (_softplus(1.0) + _softplus(-1.0)) / 2]],
                            dtype=torch.float64)
    torch.testing.assert_close(neural_response(out), expected)


def test_neural_response_upcasts_bf16():
    assert neural_response(torch.randn(3, 4, 5, dtype=torch.bfloat16)).dtype == torch.float32


def test_sum_gates_by_hand():
    aff = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 1.5, 0.5]])
    gates, mask, idx = gates_from_affinity(aff, top_k=2)
    expected = torch.tensor([[0, 0, 3 / 7, 4 / 7], [4 / 5.5, 0, 1.5 / 5.5, 0]])
    torch.testing.assert_close(gates, expected)
    assert mask.tolist() == [[False, False, True, True], [True, False, True, False]]
    assert idx.tolist() == [[3, 2], [0, 2]]


def test_sigmoid_gates_by_hand():
    aff = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    gates, _, _ = gates_from_affinity(aff, top_k=2, norm="sigmoid")
    s3, s4 = torch.sigmoid(torch.tensor(3.0)), torch.sigmoid(torch.tensor(4.0))
    expected = torch.tensor([[0.0, 0.0, s3 / (s3 + s4), s4 / (s3 + s4)]])
    torch.testing.assert_close(gates, expected)


def test_gates_are_not_detached():
    torch.manual_seed(0)
    outs = torch.randn(5, 4, 6, dtype=torch.float64, requires_grad=True)

    def grad_of_output(detach_gates: bool) -> torch.Tensor:
        gates, _, _ = gates_from_affinity(neural_response(outs), top_k=2)
        gates = gates.detach() if detach_gates else gates
        (grad,) = torch.autograd.grad((gates.unsqueeze(-1) * outs).sum(), outs)
        return grad

    through_gates, direct_only = grad_of_output(False), grad_of_output(True)
    _, mask, _ = gates_from_affinity(neural_response(outs), top_k=2)
    assert not torch.allclose(through_gates[mask], direct_only[mask])  # affinity path present
    assert torch.all(through_gates[~mask] == 0)  # losers affect neither output nor gates


def test_top_k_equals_num_experts():
    aff = torch.tensor([[1.0, 3.0]])
    gates, mask, _ = gates_from_affinity(aff, top_k=2)
    torch.testing.assert_close(gates, torch.tensor([[0.25, 0.75]]))
    assert mask.all()


@pytest.mark.parametrize("top_k, norm", [(0, "sum"), (5, "sum"), (2, "softmax")])
def test_bad_arguments(top_k, norm):
    with pytest.raises(ValueError):
        gates_from_affinity(torch.rand(3, 4), top_k, norm)
