"""The pruned sorting network (``_networks.order_statistics``) against ``np.sort``."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_byz.gars._networks import order_statistics, positions_plan


@pytest.mark.parametrize("m", [2, 3, 7, 15, 16, 27, 39])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_statistics_are_the_sorted_columns(m, dtype):
    rng = np.random.default_rng(m)
    d = 1000
    rows = rng.standard_normal((m, d)).astype(dtype)
    rows[:, :300] = np.round(rows[:, :300])  # many exact ties
    positions = frozenset({0, m // 2, m - 1, max(0, m // 2 - 2)})
    expected = np.sort(rows, axis=0)
    got = order_statistics(list(rows), positions, block=256)  # several blocks, a short last one
    assert set(got) == positions
    for p in positions:
        assert got[p].dtype == dtype
        np.testing.assert_array_equal(got[p], expected[p])


def test_the_plan_is_pruned_to_the_positions_asked():
    full = positions_plan(27, frozenset(range(27)))
    middle = positions_plan(27, frozenset({13}))
    assert len(middle) < len(full)
    assert all(kind == 0 for _, _, kind in full)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "phocas", "meamed"])
@pytest.mark.parametrize("n", [5, 8, 25, 26, 51])
def test_window_rules_by_the_network_equal_those_by_the_sort(monkeypatch, rule, n):
    """The coordinate-wise rules, values and participation, with the pruned network on every
    block and with the full sort on every block: the same (ties included)."""
    import torch

    from flwr_byz import gars
    from flwr_byz.gars import _columns

    generator = torch.Generator().manual_seed(n)
    vectors = torch.randn(n, 3000, generator=generator)
    vectors[:, :1000] = vectors[:, :1000].round()  # exact ties at the window bounds
    vectors[n - 2 :, 1000:1500] = vectors[0, 1000:1500]  # identical rows (ALIE-like)
    f = (n - 1) // 4 if rule in ("trimmed_mean", "phocas") else (n - 1) // 2
    results = []
    for per_value in (10**6, -1):  # the network everywhere, then the sort everywhere
        monkeypatch.setattr(_columns, "NETWORK_COMPARATORS_PER_VALUE", per_value)
        results.append(gars.get(rule).aggregate(vectors, f))
    network, sort = results
    assert torch.equal(network.vector, sort.vector)
    assert torch.equal(network.participation, sort.participation)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_where_bits_is_np_where_bit_for_bit(dtype):
    from flwr_byz.gars._columns import _where_bits

    rng = np.random.default_rng(7)
    new = rng.standard_normal((3, 500)).astype(dtype)
    old = rng.standard_normal((3, 500)).astype(dtype)
    new[0, :4] = [np.nan, -0.0, np.inf, -np.inf]
    old[0, :4] = [0.0, np.nan, -0.0, 1.0]
    mask = rng.random((3, 500)) < 0.5
    mask[0, :4] = [True, False, True, True]
    out = np.empty_like(new)
    _where_bits(mask, new, old, out=out)
    expected = np.where(mask, new, old)
    width = {2: np.int16, 4: np.int32, 8: np.int64}[np.dtype(dtype).itemsize]
    np.testing.assert_array_equal(out.view(width), expected.view(width))
