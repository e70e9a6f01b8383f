"""flwr_byz.metrics against float64 numpy references, and the per-round metrics of a strategy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategy_fakes import (
    flat,
    honest_update,
    initial_arrays,
    make_client_app,
    node_configs,
    to_record,
)

from flwr_byz import metrics
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Krum, Median


def _np_stats(honest: np.ndarray) -> tuple[float, float]:
    mean = honest.mean(axis=0)
    variance = float(np.mean([np.sum((g - mean) ** 2) for g in honest]))
    return variance, float(np.sum(mean**2))


@settings(max_examples=50, deadline=None)
@given(
    k=st.integers(1, 8), d=st.integers(1, 30), seed=st.integers(0, 2**16), shift=st.floats(-3, 3)
)
def test_variance_norm_ratio_matches_numpy(k: int, d: int, seed: int, shift: float) -> None:
    honest = np.random.default_rng(seed).standard_normal((k, d)) + shift
    variance, norm2 = _np_stats(honest)
    got = metrics.variance_norm_ratio(torch.tensor(honest, dtype=torch.float32))
    assert got == pytest.approx(variance / norm2, rel=1e-4, abs=1e-6)


def test_variance_norm_ratio_edge_cases() -> None:
    assert metrics.variance_norm_ratio(torch.zeros(3, 4)) == 0.0
    assert metrics.variance_norm_ratio(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == math.inf
    with pytest.raises(ValueError, match=r"\(k, d\)"):
        metrics.variance_norm_ratio(torch.zeros(4))


@pytest.mark.parametrize(
    ("n", "f", "expected"),
    [
        # by hand: n - f + (f (n-f-2) + f^2 (n-f-1)) / (n - 2f - 2)
        (51, 12, 39 + (12 * 37 + 144 * 38) / 25),  # 275.64
        (51, 24, 27 + (24 * 25 + 576 * 26) / 1),  # 15603
        (25, 11, 14 + (11 * 12 + 121 * 13) / 1),  # 1719
        (25, 5, 20 + (5 * 18 + 25 * 19) / 13),  # 63.46
        (11, 2, 9 + (2 * 7 + 4 * 8) / 5),  # 18.2
        (7, 0, 7.0),  # no Byzantine worker: n
        (7, 3, math.inf),  # n <= 2f + 2: no bound
    ],
)
def test_kappa_by_hand(n: int, f: int, expected: float) -> None:
    assert metrics.kappa(n, f) == pytest.approx(expected)
    assert metrics.kappa(51, 12) == pytest.approx(275.64)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(3, 60),
    f=st.integers(0, 25),
    scale=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_conditions_match_their_formulas(n: int, f: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((5, 6)) * scale + rng.standard_normal(6)
    variance, norm2 = _np_stats(honest)
    tensor = torch.tensor(honest)
    k = metrics.kappa(n, f)
    assert metrics.krum_condition(tensor, n, f) == (math.isfinite(k) and 2 * k * variance < norm2)
    assert metrics.median_condition(tensor, n, f) == ((n - f) * variance < norm2)
    together = metrics.round_statistics(tensor, n, f)
    assert together["variance-norm-ratio"] == pytest.approx(variance / norm2, rel=1e-9)
    assert together["krum-condition"] == float(metrics.krum_condition(tensor, n, f))
    assert together["median-condition"] == float(metrics.median_condition(tensor, n, f))


def test_byzantine_influence_sums_the_byzantine_shares() -> None:
    participation = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    byzantine = torch.tensor([False, True, False, True])
    assert metrics.byzantine_influence(participation, byzantine) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="must both be"):
        metrics.byzantine_influence(participation, byzantine[:3])


@pytest.mark.parametrize("strategy_class", [Median, Krum])
def test_round_metrics_of_a_strategy_follow_the_definitions(strategy_class) -> None:
    """Honest-only metrics over the accepted honest deltas (weights mode), n' and f' of the rule."""
    roles = ["honest"] * 9 + ["flip", "nan"]
    strategy = strategy_class(
        num_byzantine=2,
        honest_node_ids=range(1, 10),
        fraction_evaluate=0.0,
        min_train_nodes=11,
        min_available_nodes=11,
    )
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    got = result.train_metrics_clientapp[1]

    honest = np.stack([flat(honest_update(i, 1)) for i in range(1, 10)])
    variance, norm2 = _np_stats(honest)
    n_used, f_used = 10, 1  # the NaN reply is excluded: n' = 10, f' = 1
    assert got["byz.variance-norm-ratio"] == pytest.approx(variance / norm2, rel=1e-3)
    assert got["byz.krum-condition"] == float(2 * metrics.kappa(n_used, f_used) * variance < norm2)
    assert got["byz.median-condition"] == float((n_used - f_used) * variance < norm2)
    assert got["byz.byzantine-influence"] == pytest.approx(0.0, abs=1e-12)
    assert got["byz.agg-seconds"] >= 0.0
    for value in got.values():
        assert isinstance(value, int | float | list)
