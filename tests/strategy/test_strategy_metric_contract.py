"""Flower's metric contract: ``Result.train_metrics_clientapp`` holds the clients' metrics under
their own names (robust medians, or the user's aggregation) beside our diagnostics under ``byz.``;
partition ids where known; an honest ``summary()``; one grouped line per round for the replies
left out (both APIs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from strategy_fakes import initial_arrays, make_client_app, node_configs, to_record

from flwr_byz import metrics as byz_metrics
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Krum, Median, RobustStrategy, legacy

#: what the Flower PyTorch template's ClientApp reports
TEMPLATE_LOSSES = {1: 0.5, 2: 0.25, 3: 0.75, 4: 1e9, 5: 0.4}


def _sampling(n: int) -> dict:
    return {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}


def _template_app(partition_ids: dict[int, int] | None = None, bad: set[int] = frozenset()):
    """The fakes' honest updates, with the template's ``train_loss`` (node 4 lies: 1e9) and,
    when given, a ``partition-id`` metric; the nodes in ``bad`` send a NaN update."""
    good = make_client_app()
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        reply = good(message, context)
        node = context.node_id
        values = {"train_loss": TEMPLATE_LOSSES[node], "num-examples": 10**6 if node == 4 else 10}
        if partition_ids is not None:
            values["partition-id"] = partition_ids[node]
        reply.content["metrics"] = MetricRecord(values)
        if node in bad:
            arrays = reply.content["arrays"]
            weight = arrays["layer.weight"].numpy().copy()
            weight[0, 0] = np.nan
            arrays["layer.weight"] = to_record({"w": weight})["w"]
        return reply

    return app


def _one_round(strategy, app, n: int = 5):
    """``configure_train`` -> replies -> ``aggregate_train`` of round 1, by hand."""
    grid = InProcessGrid(app, node_configs(["honest"] * n))
    messages = list(strategy.configure_train(1, to_record(initial_arrays()), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    return strategy.aggregate_train(1, replies)


# ------------------------------------------------------------------ the prefix


def test_prefix_helpers_add_and_strip_one_prefix() -> None:
    assert byz_metrics.PREFIX == "byz." and byz_metrics.byz_key("replies") == "byz.replies"
    assert byz_metrics.add_prefix({"replies": 5, "kept-model": 0.0}) == {
        "byz.replies": 5,
        "byz.kept-model": 0.0,
    }
    ours, clients = byz_metrics.split_prefixed({"byz.replies": 5, "train_loss": 0.3})
    assert ours == {"replies": 5} and clients == {"train_loss": 0.3}


def test_message_api_train_metrics_are_the_clients_median_beside_byz_diagnostics() -> None:
    strategy = Median(num_byzantine=1, device="cpu", **_sampling(5))
    _, record = _one_round(strategy, _template_app())
    metrics = dict(record)
    # the template's key keeps its name; unweighted median of 0.5, 0.25, 0.75, 1e9, 0.4
    assert metrics["train_loss"] == pytest.approx(0.5)
    assert metrics["byz.replies"] == 5 and metrics["byz.excluded"] == 0
    assert metrics["byz.kept-model"] == 0.0 and metrics["byz.effective-f"] == 1
    assert "num-examples" not in metrics  # the self-reported weight is never aggregated
    # every diagnostic is prefixed: nothing but the clients' key is left unprefixed
    assert [key for key in metrics if not key.startswith("byz.")] == ["train_loss"]
    for key in ("replies", "excluded", "excluded-nodes", "dropouts", "faulty", "agg-seconds"):
        assert f"byz.{key}" in metrics and key not in metrics
    report = strategy.last_round_report
    assert report.metrics == metrics and report.diagnostics["replies"] == 5
    assert report.client_metrics == {"train_loss": pytest.approx(0.5)}


def test_message_api_user_train_metrics_fn_is_honoured_on_the_accepted_replies() -> None:
    seen: list[int] = []

    def worst_loss(contents, weighted_by_key):
        assert weighted_by_key == "num-examples"
        seen.append(len(contents))
        losses = [float(c["metrics"]["train_loss"]) for c in contents]
        return MetricRecord({"train_loss": max(losses), "byz.replies": -1})

    strategy = Median(
        num_byzantine=1, device="cpu", train_metrics_aggr_fn=worst_loss, **_sampling(5)
    )
    _, record = _one_round(strategy, _template_app(bad={4}))
    # node 4's NaN update is excluded: the function sees the 4 accepted replies only
    assert seen == [4]
    assert record["train_loss"] == pytest.approx(0.75)  # the user's max, not our median
    assert record["byz.replies"] == 5 and record["byz.excluded"] == 1  # ours are never replaced
    assert record["byz.excluded-nodes"] == [4]


def test_a_raising_user_fn_falls_back_to_the_medians(caplog: pytest.LogCaptureFixture) -> None:
    def broken(contents, key):
        raise KeyError(key)

    strategy = Median(num_byzantine=1, device="cpu", train_metrics_aggr_fn=broken, **_sampling(5))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, record = _one_round(strategy, _template_app())
    assert record["train_loss"] == pytest.approx(0.5) and record["byz.replies"] == 5
    assert any("train_metrics_aggr_fn raised" in r.getMessage() for r in caplog.records)


def _legacy_round(strategy, app, n: int = 5, statuses: dict[int, Code] | None = None):
    """One legacy ``configure_fit`` -> ``aggregate_fit`` on the in-process grid's replies."""
    grid = InProcessGrid(app, node_configs(["honest"] * n))
    proxies = {node: GridClientProxy(node, grid, run_id=1) for node in grid.get_node_ids()}
    manager = SimpleClientManager()
    for proxy in proxies.values():
        manager.register(proxy)
    start = initial_arrays()
    sender = RobustStrategy("average", **_sampling(n))  # builds the train messages, nothing else
    replies = grid.send_and_receive(
        sender.configure_train(1, to_record(start), ConfigRecord(), grid)
    )
    results = []
    for reply in replies:
        node = reply.metadata.src_node_id
        code = (statuses or {}).get(node, Code.OK)
        ndarrays = [a.numpy() for a in reply.content["arrays"].values()]
        fit_res = FitRes(
            Status(code=code, message="" if code == Code.OK else "fit refused"),
            ndarrays_to_parameters(ndarrays),
            10,
            dict(reply.content["metrics"]),
        )
        results.append((proxies[node], fit_res))
    strategy.configure_fit(1, ndarrays_to_parameters(list(start.values())), manager)
    return strategy.aggregate_fit(1, results, [])


def test_legacy_fit_metrics_default_median_and_user_fn() -> None:
    sampling = {"min_fit_clients": 5, "min_available_clients": 5, "device": "cpu"}
    _, metrics = _legacy_round(legacy.Median(num_byzantine=1, **sampling), _template_app())
    assert metrics["train_loss"] == pytest.approx(0.5) and metrics["byz.replies"] == 5
    assert [key for key in metrics if not key.startswith("byz.")] == ["train_loss"]

    seen = []

    def worst_loss(pairs):
        seen.append([n for n, _ in pairs])
        return {"train_loss": max(float(m["train_loss"]) for _, m in pairs)}

    strategy = legacy.Median(num_byzantine=1, fit_metrics_aggregation_fn=worst_loss, **sampling)
    _, metrics = _legacy_round(strategy, _template_app(bad={4}))
    assert seen == [[10, 10, 10, 10]]  # the accepted results only (node 4's NaN excluded)
    assert metrics["train_loss"] == pytest.approx(0.75)  # the user's, not the median
    assert metrics["byz.excluded"] == 1 and metrics["byz.excluded-nodes"] == [4]


# ------------------------------------------------------------------ partition ids


def test_partition_of_keyword_names_selected_and_excluded_partitions() -> None:
    partitions = {node: 100 + node for node in range(1, 8)}
    strategy = Krum(num_byzantine=1, device="cpu", partition_of=partitions, **_sampling(7))
    grid = InProcessGrid(make_client_app(), node_configs(["honest"] * 6 + ["nan"]))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    metrics = result.train_metrics_clientapp[1]
    (selected,) = metrics["byz.selected-nodes"]
    assert metrics["byz.selected-partitions"] == [100 + selected]
    assert metrics["byz.excluded-nodes"] == [7] and metrics["byz.excluded-partitions"] == [107]
    assert strategy.last_round_report.selected_partitions == [100 + selected]


def test_partition_ids_reported_by_the_clients_are_used_never_aggregated() -> None:
    reported = {node: 10 * node for node in range(1, 6)}
    strategy = Krum(num_byzantine=1, device="cpu", **_sampling(5))
    _, record = _one_round(strategy, _template_app(partition_ids=reported, bad={5}))
    (selected,) = record["byz.selected-nodes"]
    assert record["byz.selected-partitions"] == [10 * selected]
    assert record["byz.excluded-partitions"] == [50]
    assert "partition-id" not in record  # a median of partition ids means nothing
    # a given mapping wins over what a node says about itself; unknown nodes are -1
    strategy = Krum(num_byzantine=1, device="cpu", partition_of={5: 7}, **_sampling(5))
    _, record = _one_round(strategy, _template_app(bad={5}))
    assert record["byz.excluded-partitions"] == [7]
    assert record["byz.selected-partitions"] == [-1]


def test_no_partition_keys_without_partition_ids() -> None:
    strategy = Krum(num_byzantine=1, device="cpu", **_sampling(5))
    _, record = _one_round(strategy, _template_app())
    assert "byz.selected-nodes" in record
    assert "byz.selected-partitions" not in record and "byz.excluded-partitions" not in record


# ------------------------------------------------------------------ one line per round


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


def test_excluded_replies_are_logged_in_one_line_grouped_by_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    roles = ["honest"] * 6 + ["raise", "raise", "nan"]
    strategy = Median(num_byzantine=3, device="cpu", **_sampling(9))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    (line,) = _warnings(caplog, "round 1:")
    assert line.startswith("round 1: 3 of 9 nodes excluded: ")
    assert (
        "error reply (code 2, CLIENT_APP_RAISED_EXCEPTION): "
        "RuntimeError('client crashed on purpose') from nodes 7, 8"
    ) in line
    assert "non-finite update: 2 of 15 coordinates from node 9" in line
    assert not _warnings(caplog, "excluded reply from node")  # no line per node any more


def test_legacy_failures_are_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    sampling = {"min_fit_clients": 5, "min_available_clients": 5, "device": "cpu"}
    strategy = legacy.Median(num_byzantine=1, **sampling)
    statuses = {2: Code.FIT_NOT_IMPLEMENTED, 3: Code.FIT_NOT_IMPLEMENTED}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, metrics = _legacy_round(strategy, _template_app(), statuses=statuses)
    (line,) = _warnings(caplog, "round 1:")
    assert "2 of 5 nodes excluded: status FIT_NOT_IMPLEMENTED: fit refused from nodes 2, 3" in line
    assert metrics["byz.excluded"] == 2


def test_evaluation_replies_left_out_are_logged_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    roles = ["honest"] * 3 + ["raise", "raise"]
    strategy = Median(
        num_byzantine=1,
        device="cpu",
        min_train_nodes=5,
        min_evaluate_nodes=5,
        min_available_nodes=5,
    )
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    (line,) = _warnings(caplog, "evaluation replies")
    assert "2 unusable: error reply (code 2, CLIENT_APP_RAISED_EXCEPTION): RuntimeError(" in line
    assert line.endswith("from nodes 4, 5")
    assert result.evaluate_metrics_clientapp[1]["eval-loss"] == pytest.approx(2.0)


# ------------------------------------------------------------------ summary


def _summary(strategy, caplog: pytest.LogCaptureFixture) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.summary()
    return "\n".join(r.getMessage() for r in caplog.records)


def test_summary_states_the_rule_its_real_minimum_and_no_weighting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = _summary(Krum(num_byzantine=2, device="cpu"), caplog)
    assert "Rule: krum, f = 2" in text and "Pre-aggregation: none" in text
    assert "Minimum nodes: 7 accepted replies per round (krum needs n >= 7 for f = 2)" in text
    assert "not weighted" in text and "unweighted per-key median" in text and "'byz.*'" in text
    # FedAvg's misleading lines are gone; its sampling floor of 2 is called what it is
    assert "Weighted by" not in text and "Minimum nodes: train" not in text
    assert "at least 2 nodes sampled per round, fewer than the 7 krum needs" in text
    assert any(
        r.levelno == logging.WARNING and "fewer than the 7" in r.getMessage()
        for r in caplog.records
    )

    strategy = Krum(
        num_byzantine=2, device="cpu", pre=[("bucketing", {"s": 2})], min_train_nodes=13
    )
    text = _summary(strategy, caplog)
    assert "Pre-aggregation: bucketing({'s': 2})" in text and "Minimum nodes: 13" in text
    assert "fewer than" not in text

    text = _summary(legacy.Krum(num_byzantine=2, device="cpu"), caplog)
    assert "Minimum nodes: 7 accepted replies" in text and "not weighted" in text
    assert Krum(num_byzantine=2).min_nodes == 7 and Median(num_byzantine=3).min_nodes == 7


# ------------------------------------------------------------------ the ServerApp's files


def test_server_app_reads_the_prefixed_keys_and_writes_the_old_ones(tmp_path: Path) -> None:
    from flwr_byz.schema import RunConfig
    from flwr_byz.simulations import engines, server_app

    values = server_app._round_values(
        MetricRecord(
            {
                "byz.replies": 5,
                "byz.selected-nodes": [3],
                "byz.excluded-partitions": [1],
                "replies": 99,  # a client's key never replaces one of ours
                "train-loss": 0.5,
            }
        )
    )
    assert values == {"replies": 5, "selected-nodes": [3], "train-loss": 0.5}

    cfg = RunConfig(
        num_clients=5,
        num_byzantine=1,
        rule="krum",
        attack="none",
        batch_size=16,
        learning_rate=0.1,
        num_rounds=1,
        seed=3,
        results_dir=str(tmp_path),
        run_name="contract",
    )
    grid = InProcessGrid(engines.client_app(), engines.node_configs(cfg), cfg.to_flower())
    server_app.run_server(grid, cfg)
    rows = [json.loads(line) for line in (cfg.run_dir / "rounds.jsonl").read_text().splitlines()]
    row = rows[1]
    assert not [key for key in row if key.startswith("byz.")]
    assert row["replies"] == 5 and row["kept-model"] == 0.0 and "train-loss" in row
    assert len(row["selected-nodes"]) == 1 and len(row["selected-partitions"]) == 1
    assert 0 <= row["selected-partitions"][0] < 5 and "excluded-partitions" not in row
    assert "variance-norm-ratio" in row and "byzantine-influence" in row
