"""Faults that do not prove a node Byzantine never lower f; replies are matched to the messages
sent; client metrics are robust to lying clients (both APIs)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from strategy_fakes import (
    flat,
    from_record,
    honest_update,
    initial_arrays,
    make_client_app,
    node_configs,
    to_record,
)

import flwr_byz.strategy as message_api
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Average, Bulyan, Krum, TooFewRepliesError, legacy


def _sampling(n: int, evaluate: bool = False) -> dict:
    sampling = {"min_train_nodes": n, "min_available_nodes": n}
    if evaluate:
        return {**sampling, "min_evaluate_nodes": n}
    return {"fraction_evaluate": 0.0, **sampling}


class _DroppingGrid(InProcessGrid):
    """Loses the train replies of some nodes, like a timeout in a real deployment."""

    def __init__(self, *args, drop: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        return [r for r in replies if r.metadata.src_node_id not in self.drop]


# ------------------------------------------------------------------ item 1: f is not lowered


def _trimmed_mean_reference(values: np.ndarray, b: int) -> np.ndarray:
    ordered = np.sort(values, axis=0)
    return ordered[b : values.shape[0] - b].mean(axis=0)


ROBUST_NAMES = ["trimmed_mean", "phocas", "meamed", "multi_krum", "brute"]


@pytest.mark.parametrize("name", ROBUST_NAMES)
def test_one_honest_timeout_does_not_let_two_attackers_move_the_rule(name: str) -> None:
    """n = 9, f = 2, node 3 (honest) times out, nodes 8 and 9 send 1e6: f stays 2."""
    roles = ["honest"] * 7 + ["huge"] * 2
    strategy = message_api.STRATEGIES[name](num_byzantine=2, **_sampling(len(roles)))
    grid = _DroppingGrid(make_client_app(), node_configs(roles), drop={3})
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    honest = np.stack([flat(honest_update(i, 1)) for i in (1, 2, 4, 5, 6, 7)])
    delta = flat(from_record(result.arrays)) - flat(start)
    # with f' = 1 (the old f - excluded) every rule here lets one 1e6 reply in: delta ~ 1e5
    assert np.all(delta <= honest.max(axis=0) + 1e-5) and np.all(delta >= honest.min(axis=0) - 1e-5)
    report = strategy.last_round_report
    assert report.num_byzantine == 2 and not report.kept_model
    assert report.excluded_node_ids == [3] and report.faulty_node_ids == []
    if name == "trimmed_mean":
        values = np.vstack([honest, np.full((2, honest.shape[1]), 1e6)])
        np.testing.assert_allclose(delta, _trimmed_mean_reference(values, 2), atol=1e-5)
    if name in ("multi_krum", "brute"):  # both pick exactly the 6 honest replies
        np.testing.assert_allclose(delta, honest.mean(axis=0), atol=1e-5)


def test_two_dropouts_keep_bulyan_from_running_with_too_few() -> None:
    """n = 11 = 4f + 3 for f = 2; two honest nodes drop out: 9 left, Bulyan needs 11: keep."""
    roles = ["honest"] * 9 + ["huge"] * 2
    strategy = Bulyan(num_byzantine=2, **_sampling(len(roles)))
    grid = _DroppingGrid(make_client_app(), node_configs(roles), drop={1, 2})
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["byz.kept-model"] == 1.0 and metrics["byz.effective-f"] == 2
    assert metrics["byz.dropouts"] == 2 and sorted(metrics["byz.excluded-nodes"]) == [1, 2]
    assert "bulyan needs n >= 11 usable replies for f=2, got n=9" in (
        strategy.last_round_report.reason_kept
    )
    np.testing.assert_array_equal(flat(from_record(result.arrays)), flat(start))

    raising = Bulyan(num_byzantine=2, on_too_few="raise", **_sampling(len(roles)))
    with pytest.raises(TooFewRepliesError, match="bulyan needs n >= 11"):
        raising.start(grid, to_record(start), num_rounds=1)


def test_error_replies_lower_n_but_content_faults_lower_f() -> None:
    """Krum, f = 2, 9 nodes: one crash (error reply) and one NaN reply -> n' = 7, f' = 1."""
    roles = ["honest"] * 7 + ["raise", "nan"]
    strategy = Krum(num_byzantine=2, **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    report = strategy.last_round_report
    assert report.num_byzantine == 1  # old: max(0, 2 - 2) = 0
    assert sorted(report.excluded_node_ids) == [8, 9] and report.faulty_node_ids == [9]
    assert result.train_metrics_clientapp[1]["byz.faulty"] == 1


def _legacy_results(grid, start, drop: set[int]):
    """The legacy strategy's view of one round on the in-process grid, ``drop`` without result."""
    proxies = {node: GridClientProxy(node, grid, run_id=1) for node in grid.get_node_ids()}
    manager = SimpleClientManager()
    for proxy in proxies.values():
        manager.register(proxy)
    sender = Average(**_sampling(len(proxies)))  # builds the train messages, nothing else
    results = []
    for reply in grid.send_and_receive(
        sender.configure_train(1, to_record(start), ConfigRecord(), grid)
    ):
        node = reply.metadata.src_node_id
        if node in drop:
            continue
        ndarrays = [a.numpy() for a in reply.content["arrays"].values()]
        metrics = dict(reply.content["metrics"])
        fit_res = FitRes(
            Status(code=Code.OK, message=""), ndarrays_to_parameters(ndarrays), 10, metrics
        )
        results.append((proxies[node], fit_res))
    return manager, proxies, results


def test_legacy_timeout_does_not_lower_f() -> None:
    """Legacy TrimmedMean, n = 9, f = 2: node 3 fails with a timeout, 8 and 9 send 1e6."""
    roles = ["honest"] * 7 + ["huge"] * 2
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    start = initial_arrays()
    manager, _, results = _legacy_results(grid, start, drop={3})
    strategy = legacy.TrimmedMean(num_byzantine=2, min_fit_clients=9, min_available_clients=9)
    strategy.configure_fit(1, ndarrays_to_parameters(list(start.values())), manager)
    parameters, metrics = strategy.aggregate_fit(1, results, [TimeoutError("timed out")])
    assert metrics["byz.effective-f"] == 2 and metrics["byz.excluded-nodes"] == [3]
    honest = np.stack([flat(honest_update(i, 1)) for i in (1, 2, 4, 5, 6, 7)])
    values = np.vstack([honest, np.full((2, honest.shape[1]), 1e6)])
    got = np.concatenate(
        [a.astype(np.float64).ravel() for a in parameters_to_ndarrays(parameters)[:2]]
    )
    np.testing.assert_allclose(got - flat(start), _trimmed_mean_reference(values, 2), atol=1e-5)


# ------------------------------------------------------------------ item 2: reply matching


class _SuperLinkGrid(InProcessGrid):
    """A dead node's message is answered by the SuperLink (sender id 1) with NODE_UNAVAILABLE;
    ``duplicate`` nodes' replies arrive twice; ``stray`` adds a reply to no message sent."""

    def __init__(self, *args, dead=(), duplicate=(), stray=False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dead, self.duplicate, self.stray = set(dead), set(duplicate), stray

    def _deliver(self, message: Message) -> Message:
        if message.metadata.dst_node_id not in self.dead:
            return super()._deliver(message)
        reply = Message(
            Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node offline"), reply_to=message
        )
        reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
        return reply

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        extra = [r for r in replies if r.metadata.src_node_id in self.duplicate]
        if self.stray and messages:
            first = messages[0]
            fake = Message(first.content, first.metadata.dst_node_id, first.metadata.message_type)
            fake.metadata.__dict__["_message_id"] = "never-sent"
            stray = super()._deliver(fake)  # a genuine-looking reply to an id we never used
            extra.append(stray)
        return replies + extra


def test_superlink_node_unavailable_counts_for_the_dead_node_only() -> None:
    node_ids = [11, 12, 13, 14, 15, 16, 17]
    grid = _SuperLinkGrid(
        make_client_app(), node_configs(["honest"] * 7), node_ids=node_ids, dead={14}
    )
    strategy = Krum(num_byzantine=1, **_sampling(7))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    report = strategy.last_round_report
    assert [node for node, _ in report.excluded] == [14]  # old: [14 (no reply), 1 (SuperLink)]
    assert "error reply (code 5, NODE_UNAVAILABLE)" in report.excluded_reasons[14]
    metrics = result.train_metrics_clientapp[1]
    assert (
        metrics["byz.dropouts"] == 0
        and metrics["byz.excluded"] == 1
        and metrics["byz.effective-f"] == 1
    )
    assert SUPERLINK_NODE_ID not in report.accepted_node_ids and not report.kept_model


def test_a_duplicate_reply_is_dropped_never_averaged_twice() -> None:
    roles = ["honest"] * 4
    grid = _SuperLinkGrid(make_client_app(), node_configs(roles), duplicate={4}, stray=True)
    strategy = Average(**_sampling(len(roles)))
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    report = strategy.last_round_report
    assert sorted(report.accepted_node_ids) == [1, 2, 3, 4]
    assert len(report.dropped) == 2
    assert (4, "second reply to the message sent to node 4") in report.dropped
    assert any("no message sent" in reason for _, reason in report.dropped)
    assert result.train_metrics_clientapp[1]["byz.dropped-replies"] == 2
    honest = np.stack([flat(honest_update(i, 1)) for i in (1, 2, 3, 4)])
    # old code averaged 6 rows: node 4's twice, plus the stray reply
    expected = flat(start) + honest.mean(axis=0)
    np.testing.assert_allclose(flat(from_record(result.arrays)), expected, atol=1e-5)


class _CopyingGrid(InProcessGrid):
    """Sends copies of the messages (as a wrapper grid adding config does): the strategy's own
    messages never get an id, so replies are matched by node id."""

    def send_and_receive(self, messages, *, timeout=None):
        copies = [
            Message(m.content, m.metadata.dst_node_id, m.metadata.message_type) for m in messages
        ]
        replies = super().send_and_receive(copies, timeout=timeout)
        return replies + replies[:1]  # and one duplicate


def test_replies_to_copies_are_matched_by_node_once() -> None:
    grid = _CopyingGrid(make_client_app(), node_configs(["honest"] * 3))
    strategy = Average(**_sampling(3))
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    report = strategy.last_round_report
    assert sorted(report.accepted_node_ids) == [1, 2, 3] and len(report.dropped) == 1
    honest = np.stack([flat(honest_update(i, 1)) for i in (1, 2, 3)])
    np.testing.assert_allclose(
        flat(from_record(result.arrays)), flat(start) + honest.mean(axis=0), atol=1e-5
    )


# ------------------------------------------------------------------ item 4: client metrics

EVAL = {1: (0.9, 5), 2: (0.8, 5), 3: (0.85, 5), 4: (0.0, 10**12), 5: (math.inf, 5)}


def _evaluating_app() -> ClientApp:
    app = ClientApp()
    good = make_client_app()

    @app.train()
    def train(message: Message, context) -> Message:
        return good(message, context)

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        accuracy, examples = EVAL[context.node_id]
        metrics = MetricRecord({"accuracy": accuracy, "num-examples": examples})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    return app


def test_evaluation_metrics_are_unweighted_medians_of_finite_values() -> None:
    grid = InProcessGrid(_evaluating_app(), node_configs(["honest"] * 5))
    strategy = Average(**_sampling(5, evaluate=True))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    metrics = result.evaluate_metrics_clientapp[1]
    # median of 0.9, 0.8, 0.85, 0.0 (inf dropped); weighted by counts it was ~1e-11
    assert metrics["accuracy"] == pytest.approx((0.8 + 0.85) / 2, rel=1e-12)
    assert "num-examples" not in metrics


def test_user_metric_aggregation_functions_are_honoured() -> None:
    def train_fn(contents, key):
        return MetricRecord({"custom-train": float(len(contents))})

    def evaluate_fn(contents, key):
        return MetricRecord({"custom-eval": float(len(contents))})

    grid = InProcessGrid(_evaluating_app(), node_configs(["honest"] * 5))
    strategy = Average(
        train_metrics_aggr_fn=train_fn, evaluate_metrics_aggr_fn=evaluate_fn, **_sampling(5, True)
    )
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    assert result.evaluate_metrics_clientapp[1]["custom-eval"] == 5.0
    train = result.train_metrics_clientapp[1]
    assert train["custom-train"] == 5.0 and train["byz.replies"] == 5  # ours are kept beside it


def test_a_lying_client_does_not_set_the_train_loss() -> None:
    app = ClientApp()
    good = make_client_app()

    @app.train()
    def train(message: Message, context) -> Message:
        reply = good(message, context)
        if context.node_id == 4:
            reply.content["metrics"] = MetricRecord({"train-loss": 1e12, "num-examples": 10**12})
        return reply

    grid = InProcessGrid(app, node_configs(["honest"] * 4))
    strategy = Average(**_sampling(4))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    # fake clients report train-loss = node id: median of 1, 2, 3, 1e12
    assert result.train_metrics_clientapp[1]["train-loss"] == pytest.approx(2.5)


def _evaluate_res(loss: float, examples: int, accuracy: float) -> EvaluateRes:
    status = Status(code=Code.OK, message="")
    return EvaluateRes(status=status, loss=loss, num_examples=examples, metrics={"acc": accuracy})


def test_legacy_evaluation_survives_lying_counts() -> None:
    strategy = legacy.Median(num_byzantine=1)
    results = [
        (None, _evaluate_res(1.0, 5, 0.9)),
        (None, _evaluate_res(2.0, -10, 0.8)),  # counts summing to 0: old ZeroDivisionError
        (None, _evaluate_res(3.0, 5, 0.7)),
    ]
    loss, metrics = strategy.aggregate_evaluate(1, results, [])
    assert loss == pytest.approx(2.0) and metrics == {"acc": pytest.approx(0.8)}
    liar = [(None, _evaluate_res(1.0, 5, 0.9)), (None, _evaluate_res(100.0, 10**12, 0.0))]
    liar += [(None, _evaluate_res(2.0, 5, 0.8)), (None, _evaluate_res(math.nan, 5, math.inf))]
    loss, metrics = strategy.aggregate_evaluate(1, liar, [])  # old: loss ~ 100, acc absent
    assert loss == pytest.approx(2.0) and metrics == {"acc": pytest.approx(0.8)}


def test_legacy_user_fit_metrics_function_is_honoured() -> None:
    grid = InProcessGrid(make_client_app(), node_configs(["honest"] * 3))
    start = initial_arrays()
    manager, _, results = _legacy_results(grid, start, drop=set())
    seen = []

    def fit_fn(pairs):
        seen.append(pairs)
        return {"custom": float(sum(n for n, _ in pairs))}

    strategy = legacy.Average(
        min_fit_clients=3, min_available_clients=3, fit_metrics_aggregation_fn=fit_fn
    )
    strategy.configure_fit(1, ndarrays_to_parameters(list(start.values())), manager)
    _, metrics = strategy.aggregate_fit(1, results, [])
    # the user's function replaces the medians of the clients' metrics; ours stay beside it
    assert metrics["custom"] == 30.0 and "train-loss" not in metrics
    assert metrics["byz.replies"] == 3 and metrics["byz.excluded"] == 0


# ------------------------------------------------------------------ item 9: who and why


def test_round_report_details_name_the_excluded_nodes_and_reasons() -> None:
    roles = ["honest"] * 5 + ["nan", "raise"]
    grid = _DroppingGrid(make_client_app(), node_configs(roles), drop={2})
    strategy = message_api.Median(num_byzantine=2, **_sampling(len(roles)))
    strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    details = strategy.last_round_report.details()
    reasons = dict(zip(details["excluded-nodes"], details["excluded-reasons"], strict=True))
    assert sorted(reasons) == [2, 6, 7]
    assert "no reply" in reasons[2] and "non-finite" in reasons[6] and "crashed" in reasons[7]
    assert details["faulty-nodes"] == [6] and details["effective-f"] == 1


def test_median_client_metrics_by_hand() -> None:
    from flwr_byz.metrics import median_client_metrics

    rows = [
        {"acc": 0.5, "vec": [1.0, 10.0], "flag": True, "name": "x", "num-examples": 3},
        {"acc": 0.7, "vec": [3.0, 30.0], "big": 2**2000},
        {"acc": math.nan, "vec": [2.0, math.inf]},  # non-finite: dropped (the whole list)
        {"acc": 0.6, "vec": [5.0, 50.0, 500.0]},  # not the most common length: left out
        {"acc": 100.0, "vec": [2.0, 20.0]},
    ]
    got = median_client_metrics(rows, exclude={"num-examples"})
    assert got == {"acc": pytest.approx((0.6 + 0.7) / 2), "vec": [2.0, 20.0]}


def test_a_rule_failing_on_one_round_keeps_the_model_and_the_run_goes_on(monkeypatch) -> None:
    """A ``RuntimeError`` of the rule (a failed decomposition, out of memory) on round 1's input
    refuses that round with its reason; round 2 aggregates as usual."""
    from flwr_byz.strategy.core import RobustAggregator

    original = RobustAggregator._run_rule

    def failing_once(self, vectors, f, track, server_round=0):
        if server_round == 1:
            raise RuntimeError("out of memory on purpose")
        return original(self, vectors, f, track, server_round)

    monkeypatch.setattr(RobustAggregator, "_run_rule", failing_once)
    roles = ["honest"] * 7
    strategy = Krum(num_byzantine=1, **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    start = initial_arrays()
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("flwr.byz")
    logger.addHandler(handler)
    try:
        result = strategy.start(grid, to_record(start), num_rounds=2)
    finally:
        logger.removeHandler(handler)
    expected = "krum failed on this round's input (RuntimeError: out of memory on purpose)"
    assert any(line.startswith("round 1: model kept") and expected in line for line in warnings)
    first, second = result.train_metrics_clientapp[1], result.train_metrics_clientapp[2]
    assert first["byz.kept-model"] == 1.0 and second["byz.kept-model"] == 0.0
    assert not np.array_equal(flat(from_record(result.arrays)), flat(start))
    assert strategy.last_round_report.reason_kept is None
