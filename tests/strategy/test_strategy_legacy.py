"""The legacy classes (flwr.server.strategy) give the same aggregate as the Message-API ones."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from strategy_fakes import initial_arrays, make_client_app, node_configs, to_record

import flwr_byz.strategy as message_api
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import legacy

ROLES = ["honest"] * 8 + ["flip", "nan", "raise"]
N = len(ROLES)


def _round(strategy, grid, arrays, server_round):
    """One Message-API round by hand; returns the replies and the new arrays."""
    messages = strategy.configure_train(server_round, to_record(arrays), ConfigRecord(), grid)
    replies = grid.send_and_receive(messages)
    new_record, metrics = strategy.aggregate_train(server_round, replies)
    return replies, {k: v.numpy() for k, v in new_record.items()}, metrics


def _legacy_round(strategy, grid, arrays, replies, server_round):
    manager = SimpleClientManager()
    proxies = {node: GridClientProxy(node, grid, run_id=1) for node in grid.get_node_ids()}
    for proxy in proxies.values():
        manager.register(proxy)
    strategy.configure_fit(server_round, ndarrays_to_parameters(list(arrays.values())), manager)
    results, failures = [], []
    for reply in replies:
        proxy = proxies[reply.metadata.src_node_id]
        if reply.has_error():
            failures.append(RuntimeError(reply.error.reason))
            continue
        ndarrays = [a.numpy() for a in reply.content["arrays"].values()]
        status = Status(code=Code.OK, message="")
        metrics = dict(reply.content["metrics"])
        results.append((proxy, FitRes(status, ndarrays_to_parameters(ndarrays), 10, metrics)))
    parameters, metrics = strategy.aggregate_fit(server_round, results, failures)
    return parameters_to_ndarrays(parameters), metrics


@pytest.mark.parametrize("name", list(message_api.STRATEGIES))
def test_legacy_and_message_api_agree_on_the_same_replies(name: str) -> None:
    sampling = {"fraction_evaluate": 0.0, "min_train_nodes": N, "min_available_nodes": N}
    modern = message_api.STRATEGIES[name](num_byzantine=2, **sampling)
    old = getattr(legacy, type(modern).__name__)(
        num_byzantine=2, fraction_fit=1.0, min_fit_clients=N, min_available_clients=N
    )
    assert isinstance(old, LegacyFedAvg)
    grid = InProcessGrid(make_client_app(), node_configs(ROLES))
    arrays = initial_arrays()
    for server_round in (1, 2):
        replies, new_modern, metrics = _round(modern, grid, arrays, server_round)
        new_old, old_metrics = _legacy_round(old, grid, arrays, replies, server_round)
        for got, want in zip(new_old, new_modern.values(), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert old_metrics["byz.excluded"] == metrics["byz.excluded"] == 2
        assert old_metrics.get("byz.selected-nodes") == metrics.get("byz.selected-nodes")
        arrays = new_modern


def test_legacy_gradient_mode_puts_the_learning_rate_in_the_fit_config() -> None:
    strategy = legacy.Median(
        num_byzantine=1, update_mode="gradient", learning_rate=0.2, lr_schedule_r=1.0
    )
    grid = InProcessGrid(make_client_app("gradient"), node_configs(["honest"] * 3))
    manager = SimpleClientManager()
    for node in grid.get_node_ids():
        manager.register(GridClientProxy(node, grid, run_id=1))
    params = ndarrays_to_parameters(list(initial_arrays().values()))
    instructions = strategy.configure_fit(3, params, manager)
    rates = [ins.config["learning-rate"] for _, ins in instructions]
    assert len(rates) == 3 and rates == pytest.approx([0.2 / 3] * 3)  # eta_0 r / (t + r), t = 2


def test_legacy_without_configure_fit_says_what_is_missing() -> None:
    strategy = legacy.Krum(num_byzantine=0)
    with pytest.raises(RuntimeError, match="no global model remembered"):
        strategy.aggregate_fit(1, [], [])
