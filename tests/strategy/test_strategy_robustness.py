"""Several rounds through InProcessGrid: f attackers destroy FedAvg, not the robust strategies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg
from strategy_fakes import (
    SHAPES,
    flat,
    from_record,
    honest_update,
    initial_arrays,
    make_client_app,
    node_configs,
    to_record,
)

import flwr_byz.strategy as strategies
from flwr_byz.inprocess import InProcessGrid

NUM_HONEST, F, ROUNDS = 9, 2, 3
N = NUM_HONEST + F
SAMPLING = {"fraction_evaluate": 0.0, "min_train_nodes": N, "min_available_nodes": N}
ROBUST = [name for name in strategies.STRATEGIES if name != "average"]


def _honest_reference() -> tuple[np.ndarray, float]:
    """float64 model after ROUNDS rounds of the honest mean, and the robustness radius.

    The radius sums, over rounds, the diagonal of the honest updates' bounding box: every rule that
    stays within the honest values (coordinate-wise) or picks honest inputs lies within it of the
    honest mean; the geometric median may sit slightly outside, hence the factor 2.
    """
    theta = flat(initial_arrays())
    radius = 0.0
    honest_ids = range(1, NUM_HONEST + 1)
    for r in range(1, ROUNDS + 1):
        updates = np.stack([flat(honest_update(i, r)) for i in honest_ids])
        theta = theta + updates.mean(axis=0)
        radius += 2.0 * float(np.linalg.norm(updates.max(axis=0) - updates.min(axis=0)))
    return theta, radius


def _run(strategy, attack: str) -> np.ndarray:
    grid = InProcessGrid(make_client_app(), node_configs(["honest"] * NUM_HONEST + [attack] * F))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=ROUNDS)
    return flat(from_record(result.arrays))


@pytest.mark.parametrize("attack", ["huge", "nan", "flip"])
def test_fedavg_is_destroyed_and_every_robust_strategy_is_not(attack: str) -> None:
    reference, radius = _honest_reference()

    fedavg = _run(FedAvg(**SAMPLING), attack)
    assert not np.all(np.isfinite(fedavg)) or np.linalg.norm(fedavg - reference) > 10 * radius

    unweighted_average = _run(strategies.Average(num_byzantine=F, **SAMPLING), attack)
    if attack != "nan":  # NaN replies are excluded before any rule, even the average
        assert np.linalg.norm(unweighted_average - reference) > 10 * radius

    for name in ROBUST:
        model = _run(strategies.STRATEGIES[name](num_byzantine=F, **SAMPLING), attack)
        distance = float(np.linalg.norm(model - reference))
        assert distance <= radius, f"{name} under {attack}: {distance} > {radius}"


@pytest.mark.parametrize("name", ROBUST)
def test_selection_rules_report_only_honest_nodes_and_zero_influence(name: str) -> None:
    strategy = strategies.STRATEGIES[name](num_byzantine=F, **SAMPLING)
    strategy.honest_node_ids = range(1, NUM_HONEST + 1)  # set after construction, as simulations do
    grid = InProcessGrid(make_client_app(), node_configs(["honest"] * NUM_HONEST + ["huge"] * F))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    metrics = result.train_metrics_clientapp[1]
    report = strategy.last_round_report
    assert metrics["byz.replies"] == N and metrics["byz.excluded"] == 0
    assert sorted(report.accepted_node_ids) == list(range(1, N + 1))
    # geometric median: Weiszfeld weights of far points are tiny, not zero
    assert metrics["byz.byzantine-influence"] == pytest.approx(0.0, abs=1e-6)
    assert sum(report.participation.values()) == pytest.approx(1.0)
    if strategy.aggregator.rule.selects:
        selected = list(metrics["byz.selected-nodes"])
        assert selected == report.selected_node_ids
        if name == "bulyan":
            # Bulyan's last selection steps score over 1 neighbour: two identical attackers can be
            # selected (distance 0), then trimmed coordinate-wise (influence 0 above).
            assert len(selected) == N - 2 * F and set(selected) <= set(range(1, N + 1))
        else:
            assert selected and all(1 <= node <= NUM_HONEST for node in selected)
    else:
        assert "byz.selected-nodes" not in metrics


def test_average_influence_is_the_byzantine_share() -> None:
    strategy = strategies.Average(
        num_byzantine=F, honest_node_ids=range(1, NUM_HONEST + 1), **SAMPLING
    )
    grid = InProcessGrid(make_client_app(), node_configs(["honest"] * NUM_HONEST + ["flip"] * F))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    assert result.train_metrics_clientapp[1]["byz.byzantine-influence"] == pytest.approx(F / N)
    assert len(SHAPES) == 2
