"""Client partitions (iid, dirichlet, shared) and the seeded mini-batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz import data


def _labels(count: int, classes: int, seed: int) -> torch.Tensor:
    return torch.randint(classes, (count,), generator=torch.Generator().manual_seed(seed))


def _assert_exact_cover(parts: list[torch.Tensor], count: int) -> None:
    together = np.concatenate([part.numpy() for part in parts])
    np.testing.assert_array_equal(np.sort(together), np.arange(count))
    assert all(part.dtype == torch.int64 for part in parts)


@given(
    count=st.integers(1, 400),
    clients=st.integers(1, 60),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=60, deadline=None)
def test_iid_covers_once_in_near_equal_shards(count: int, clients: int, seed: int) -> None:
    labels = _labels(count, 10, seed)
    if count < clients:
        with pytest.raises(ValueError, match="cannot give each"):
            data.partition(labels, clients, "iid", seed=seed)
        return
    parts = data.partition(labels, clients, "iid", seed=seed)
    assert len(parts) == clients
    _assert_exact_cover(parts, count)
    sizes = [part.numel() for part in parts]
    assert max(sizes) - min(sizes) <= 1


@given(
    count=st.integers(1, 400),
    clients=st.integers(1, 40),
    classes=st.integers(1, 10),
    alpha=st.sampled_from([0.01, 0.1, 0.5, 1.0, 100.0]),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=80, deadline=None)
def test_dirichlet_covers_once_and_leaves_no_client_empty(count, clients, classes, alpha, seed):
    if count < clients:
        return
    labels = _labels(count, classes, seed)
    parts = data.partition(labels, clients, "dirichlet", alpha=alpha, seed=seed)
    assert len(parts) == clients
    _assert_exact_cover(parts, count)
    assert min(part.numel() for part in parts) >= 1


def test_dirichlet_alpha_controls_heterogeneity() -> None:
    labels = _labels(5000, 10, 0)

    def mean_label_entropy(alpha: float) -> float:
        entropies = []
        for part in data.partition(labels, 10, "dirichlet", alpha=alpha, seed=1):
            shares = labels[part].bincount(minlength=10).double() / part.numel()
            shares = shares[shares > 0]
            entropies.append(float(-(shares * shares.log()).sum()))
        return float(np.mean(entropies))

    assert mean_label_entropy(0.05) < mean_label_entropy(1.0) < mean_label_entropy(100.0)
    assert mean_label_entropy(100.0) > 0.95 * np.log(10)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_seeded(scheme: str) -> None:
    labels = _labels(500, 10, 0)
    first, again, other = (data.partition(labels, 7, scheme, seed=s) for s in (2, 2, 3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_shared_gives_everyone_everything_and_errors() -> None:
    labels = _labels(50, 10, 0)
    parts = data.partition(labels, 4, "shared")
    assert len(parts) == 4 and all(torch.equal(part, torch.arange(50)) for part in parts)
    with pytest.raises(ValueError, match="unknown partition scheme 'pathological'"):
        data.partition(labels, 4, "pathological")
    with pytest.raises(ValueError, match="alpha > 0"):
        data.partition(labels, 4, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="num_clients"):
        data.partition(labels, 0, "iid")
    with pytest.raises(ValueError, match="1-D integer"):
        data.partition(labels.float(), 4, "iid")


def test_sample_batch_is_seeded_per_seed_node_and_round() -> None:
    indices = torch.arange(100, 300)
    batch = data.sample_batch(indices, 32, seed=0, node_key=5, round_number=1)
    assert batch.shape == (32,) and batch.unique().numel() == 32  # no repeats in a batch
    assert bool(((batch >= 100) & (batch < 300)).all())
    assert torch.equal(batch, data.sample_batch(indices, 32, 0, 5, 1))
    assert torch.equal(batch, data.batch_sampler(indices, 32, 0, 5)(1))
    for other in [(1, 5, 1), (0, 6, 1), (0, 5, 2), (0, "5x", 1)]:
        assert not torch.equal(batch, data.sample_batch(indices, 32, *other))


def test_sample_batch_draws_uniformly_over_rounds() -> None:
    indices = torch.arange(20)
    sampler = data.batch_sampler(indices, 5, seed=0, node_key="client-3")
    counts = torch.stack([sampler(r) for r in range(2000)]).flatten().bincount(minlength=20)
    # each index expected 2000 * 5 / 20 = 500 times; binomial sd ~19.4
    assert int((counts - 500).abs().max()) < 5 * 19.4


def test_sample_batch_errors() -> None:
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 10\]"):
        data.sample_batch(torch.arange(10), 11, 0, 0, 0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        data.sample_batch(torch.arange(0), 1, 0, 0, 0)
