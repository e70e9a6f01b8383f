"""bit_flip and gambler (Phocas paper's dimensional Byzantine faults) against numpy references."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz import attacks


def _received(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _flip_with_struct(value: float, bits: tuple[int, ...]) -> float:
    (word,) = struct.unpack("<I", struct.pack("<f", value))
    for bit in bits:
        word ^= 1 << (bit - 1)
    return struct.unpack("<f", struct.pack("<I", word))[0]


def test_bit_flip_default_matches_struct_reference() -> None:
    received = _received(5, 1200, 0)
    corrupted, hit = attacks.bit_flip(received, f=3, return_mask=True)
    before, after = received.numpy(), corrupted.numpy()
    # One hit on each of the first 1000 coordinates, round-robin over rows 0..f-1.
    expected_hit = np.zeros((5, 1200), dtype=bool)
    expected_hit[np.arange(1000) % 3, np.arange(1000)] = True
    np.testing.assert_array_equal(hit.numpy(), expected_hit)
    np.testing.assert_array_equal(after[~expected_hit], before[~expected_hit])
    rows, cols = np.nonzero(expected_hit)
    for row, col in zip(rows[:50], cols[:50], strict=True):
        expected = _flip_with_struct(float(before[row, col]), (22, 30, 31, 32))
        assert struct.pack("<f", after[row, col]) == struct.pack("<f", expected)


@given(
    n=st.integers(1, 6),
    d=st.integers(1, 40),
    f=st.integers(0, 6),
    bits=st.sets(st.integers(1, 32), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    spread=st.sampled_from(["round_robin", "random"]),
)
@settings(max_examples=60, deadline=None)
def test_bit_flip_flips_exactly_the_bits(n, d, f, bits, seed, spread) -> None:
    f = min(f, n)
    received = _received(n, d, seed)
    count = d // 2
    corrupted, hit = attacks.bit_flip(
        received,
        f,
        coordinates=count,
        bits=tuple(sorted(bits)),
        generator=torch.Generator().manual_seed(seed),
        spread=spread,
        return_mask=True,
    )
    mask = np.uint32(sum(1 << (bit - 1) for bit in bits))
    before = received.numpy().view(np.uint32)
    after = corrupted.numpy().view(np.uint32)
    flipped = before ^ after
    hits = hit.numpy()
    np.testing.assert_array_equal(flipped[hits], np.full(hits.sum(), mask, dtype=np.uint32))
    np.testing.assert_array_equal(flipped[~hits], 0)
    per_column = hits.sum(axis=0)
    expected_columns = np.zeros(d, dtype=np.int64)
    if f > 0:
        expected_columns[:count] = 1
    np.testing.assert_array_equal(per_column, expected_columns)
    if spread == "round_robin" and f > 0:
        assert not hits[f:].any()
    # Flipping twice restores the input bit for bit; the input is never modified.
    twice = attacks.bit_flip(
        corrupted,
        f,
        coordinates=count,
        bits=tuple(sorted(bits)),
        generator=torch.Generator().manual_seed(seed),
        spread=spread,
    )
    np.testing.assert_array_equal(twice.numpy().view(np.uint32), before)
    np.testing.assert_array_equal(received.numpy().view(np.uint32), before)


def test_bit_flip_index_tensor_and_random_spread_determinism() -> None:
    received = _received(20, 300, 1)
    columns = torch.tensor([3, 100, 299])
    _, hit = attacks.bit_flip(received, 6, coordinates=columns, return_mask=True)
    assert hit.sum() == 3 and hit[:, columns].any(dim=0).all()
    runs = [
        attacks.bit_flip(
            received,
            6,
            generator=torch.Generator().manual_seed(s),
            spread="random",
            return_mask=True,
        )[1]
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert runs[0][6:].any(), "random spread must reach rows beyond the first f"


def test_bit_flip_errors() -> None:
    with pytest.raises(TypeError, match="float32"):
        attacks.bit_flip(torch.zeros(3, 4, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        attacks.bit_flip(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="1..32"):
        attacks.bit_flip(torch.zeros(3, 4), 1, bits=(0,))
    with pytest.raises(ValueError, match="0 <= f <= n"):
        attacks.bit_flip(torch.zeros(3, 4), 4)
    with pytest.raises(ValueError, match="spread"):
        attacks.bit_flip(torch.zeros(3, 4), 1, spread="diagonal")
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        attacks.bit_flip(torch.zeros(3, 4), 1, coordinates=torch.tensor([4]))


def test_shard_bounds_cover_contiguously() -> None:
    for d, shards in [(10, 3), (7, 7), (100, 20), (3, 5)]:
        bounds = attacks.shard_bounds(d, shards)
        sizes = [stop - start for start, stop in bounds]
        assert bounds[0][0] == 0 and bounds[-1][1] == d and len(bounds) == shards
        assert all(bounds[i][1] == bounds[i + 1][0] for i in range(shards - 1))
        assert max(sizes) - min(sizes) <= 1
        assert [len(part) for part in torch.tensor_split(torch.arange(d), shards)] == sizes


def test_gambler_hits_one_shard_with_the_probability() -> None:
    n, d, shards, probability = 20, 40_000, 4, 0.01
    received = _received(n, d, 2)
    corrupted, hit = attacks.gambler(
        received,
        shards,
        probability=probability,
        shard=2,
        generator=torch.Generator().manual_seed(0),
        return_mask=True,
    )
    start, stop = 20_000, 30_000
    assert not hit[:, :start].any() and not hit[:, stop:].any()
    trials = n * (stop - start)
    count = int(hit.sum())
    sd = math.sqrt(trials * probability * (1 - probability))
    assert abs(count - trials * probability) < 5 * sd
    before, after, mask = received.double().numpy(), corrupted.double().numpy(), hit.numpy()
    np.testing.assert_array_equal(after[~mask], before[~mask])
    np.testing.assert_allclose(after[mask], -1e20 * before[mask], rtol=1e-6)
    assert torch.equal(received, _received(n, d, 2))


def test_gambler_drawn_shard_and_determinism() -> None:
    received = _received(6, 1000, 3)
    seen = set()
    for seed in range(40):
        _, hit = attacks.gambler(
            received,
            5,
            probability=0.5,
            generator=torch.Generator().manual_seed(seed),
            return_mask=True,
        )
        columns = torch.nonzero(hit.any(dim=0)).flatten()
        assert columns.numel() > 0
        shard = int(columns.min()) // 200
        assert int(columns.max()) // 200 == shard
        seen.add(shard)
    assert seen == {0, 1, 2, 3, 4}
    first = attacks.gambler(received, 5, generator=torch.Generator().manual_seed(1))
    again = attacks.gambler(received, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    always = attacks.gambler(received, 5, probability=1.0, scale=2.0, shard=0)
    np.testing.assert_array_equal(always[:, :200].numpy(), 2 * received[:, :200].numpy())


def test_gambler_errors() -> None:
    with pytest.raises(ValueError, match="shards"):
        attacks.gambler(torch.zeros(3, 4), 0)
    with pytest.raises(ValueError, match="probability"):
        attacks.gambler(torch.zeros(3, 4), 2, probability=1.5)
    with pytest.raises(ValueError, match=r"shard must be in \[0, 1\]"):
        attacks.gambler(torch.zeros(3, 4), 2, shard=2)
    with pytest.raises(TypeError, match="floating"):
        attacks.gambler(torch.zeros(3, 4, dtype=torch.int32), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_channel_faults_on_cuda() -> None:
    received = _received(4, 50, 0)
    on_device = attacks.bit_flip(received.cuda(), 2, coordinates=10)
    assert on_device.device.type == "cuda"
    assert torch.equal(on_device.cpu(), attacks.bit_flip(received, 2, coordinates=10))
    gambled = attacks.gambler(received.cuda(), 2, probability=0.3, shard=1)
    assert gambled.device.type == "cuda"
