"""The pruned sorting network (``_columns.order_statistics``) against ``np.sort``."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_byz.gars._columns import order_statistics, positions_plan


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
