"""ChannelFaultGrid: the Phocas paper's faults applied to what the server receives."""

from __future__ import annotations

import pytest
import torch
from client_helpers import make_grid, reply_vector, run_round

from flwr_byz import attacks
from flwr_byz.clients import ChannelFaultGrid

MASK = (1 << 21) | (1 << 29) | (1 << 30) | (1 << 31)  # float32 bits 22, 30, 31, 32


def _received(arrays0, grid) -> torch.Tensor:
    replies = run_round(grid, arrays0, rnd=1)
    return torch.stack([reply_vector(replies[node]).float() for node in sorted(replies)])


def test_bit_flip_hits_one_received_value_per_attacked_coordinate(arrays0) -> None:
    clean = _received(arrays0, make_grid(5, {}))
    faulty = _received(arrays0, ChannelFaultGrid(make_grid(5, {}), "bit_flip", coordinates=300))
    flipped = (faulty.view(torch.int32) ^ clean.view(torch.int32)) & MASK
    hit = flipped == torch.tensor(MASK).to(torch.int32)
    assert torch.equal(hit[:, :300].sum(dim=0), torch.ones(300, dtype=torch.int64))
    assert not bool(hit[:, 300:].any())
    assert torch.equal(faulty[:, 300:], clean[:, 300:])
    assert len(set(hit[:, :300].to(torch.int64).argmax(dim=0).tolist())) > 1  # spread over senders


def test_gambler_scales_one_shard(arrays0) -> None:
    clean = _received(arrays0, make_grid(4, {}))
    grid = ChannelFaultGrid(
        make_grid(4, {}), "gambler", shards=5, shard=3, probability=1.0, scale=-2.0
    )
    faulty = _received(arrays0, grid)
    start, stop = attacks.shard_bounds(clean.shape[1], 5)[3]
    expected = clean.clone()
    expected[:, start:stop] *= -2.0
    assert torch.equal(faulty, expected)


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="bit_flip"):
        ChannelFaultGrid(make_grid(1, {}), "erasure")
