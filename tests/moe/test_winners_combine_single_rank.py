"""winners_combine on one rank, fast (no spawned processes): the winners-only competition equals
the full combine's (every expert output brought back, scored where the token lives) in
affinities, winners, gates, winner outputs and gradients; its split-size helpers by hand.
The exchange between ranks: test_winners_combine_uneven.py and test_layer_parity.py."""

import pytest
import torch

from csmoe_megatron.config.schema import CompeteSMoEConfig
from csmoe_megatron.moe import winners_combine
from csmoe_megatron.moe.affinity import neural_response

from tests.moe.layer_harness import BATCH, HIDDEN, SEQ, build_layer, make_config
from tests.moe.single_rank import single_rank
from tests.moe.winners_check import assert_winners_equal_full


@pytest.fixture(scope="module", autouse=True)
def _one_rank():
    with single_rank():
        yield


@pytest.mark.parametrize("gate_norm,token_chunk,top_k", [("sum", 0, 2), ("sigmoid", 3, 3),
                                                         ("sum", 1, 4)])
def test_winners_equal_the_full_combine(gate_norm, token_chunk, top_k):
    config = make_config(top_k=top_k)
    layer = build_layer(config, CompeteSMoEConfig(gate_norm=gate_norm, token_chunk=token_chunk))
    layer.train()
    x = torch.randn(SEQ, BATCH, HIDDEN, generator=torch.Generator().manual_seed(11))
    upstream = torch.randn(SEQ * BATCH, HIDDEN, generator=torch.Generator().manual_seed(12))
    assert_winners_equal_full(layer, x, upstream)


def test_row_affinities_chunked_equal_unchunked():
    rows = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    whole = neural_response(rows)
    assert whole.shape == (10,)
    for chunk in (0, 1, 3, 10, 11):
        torch.testing.assert_close(winners_combine.row_affinities(rows, chunk), whole)


def test_split_sizes_by_hand():
    keep_expert = torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)  # rows received: 2 + 3
    keep_source = torch.tensor([0, 1, 1, 1], dtype=torch.bool)  # rows sent: 1 + 3
    assert winners_combine._segment_sums(keep_expert, [2, 3]).tolist() == [1, 2]
    send_back, receive = winners_combine._host_split_sizes(keep_source, keep_expert,
                                                           sent=[1, 3], received=[2, 3])
    assert (send_back, receive) == ([1, 2], [0, 3])
    assert winners_combine._host_split_sizes(keep_source, keep_expert, None, None) == (None, None)
    assert winners_combine._splits(None) is None
    assert winners_combine._splits(torch.tensor([2, 5])) == [2, 5]
