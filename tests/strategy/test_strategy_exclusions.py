"""Bad replies are excluded, reported and counted; too few replies keep the model or raise."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from strategy_fakes import (
    INT_KEY,
    ROLES_BAD_REPLY,
    SHAPES,
    flat,
    from_record,
    honest_update,
    initial_arrays,
    make_client_app,
    node_configs,
    to_record,
)

from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Krum, Median, TooFewRepliesError, TrimmedMean

REASON_WORDS = {
    "error": "error reply",
    "raise": "client crashed on purpose",
    "missing-key": "missing keys ['layer.bias']",
    "extra-key": "unexpected keys ['extra']",
    "wrong-shape": "shape (3, 4)",
    "wrong-dtype": "dtype float64",
    "nan": "non-finite",
}


def _sampling(n: int) -> dict:
    return {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}


@pytest.mark.parametrize("role", ROLES_BAD_REPLY)
def test_bad_reply_is_excluded_reported_and_the_rule_runs_on_the_rest(role: str) -> None:
    roles = ["honest"] * 6 + [role]
    strategy = Median(num_byzantine=1, **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)

    metrics = result.train_metrics_clientapp[1]
    assert metrics["byz.replies"] == 7
    assert metrics["byz.excluded"] == 1
    report = strategy.last_round_report
    assert [node for node, _ in report.excluded] == [7]
    assert REASON_WORDS[role] in report.excluded_reasons[7]
    assert sorted(report.accepted_node_ids) == [1, 2, 3, 4, 5, 6]
    # an error reply may be an honest crash: f stays; a reply whose content breaks the protocol
    # proves its sender faulty: f' = f - 1
    crashed = role in ("error", "raise")
    assert report.num_byzantine == (1 if crashed else 0)
    assert report.faulty_node_ids == ([] if crashed else [7])

    # float64 reference: coordinate-wise median of the 6 honest deltas (mean of the middle two)
    deltas = np.stack([flat(honest_update(i, 1)) for i in range(1, 7)])
    expected = flat(start) + np.median(deltas, axis=0)
    np.testing.assert_allclose(flat(from_record(result.arrays)), expected, rtol=1e-5, atol=1e-5)


def test_integer_buffers_keep_the_global_value_and_all_dtypes_shapes_are_preserved() -> None:
    roles = ["honest"] * 5
    strategy = TrimmedMean(num_byzantine=1, **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=3)
    out = from_record(result.arrays)
    assert list(out) == list(start)  # same keys, same order
    for key, value in start.items():
        assert out[key].dtype == value.dtype and out[key].shape == value.shape
    assert int(out[INT_KEY]) == int(start[INT_KEY])  # clients sent 1000+ more: not aggregated


def test_too_few_replies_keep_the_model_unchanged() -> None:
    roles = ["honest"] * 6  # Krum with f = 2 needs n >= 7
    strategy = Krum(num_byzantine=2, **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=2)
    for key, value in start.items():
        np.testing.assert_array_equal(result.arrays[key].numpy(), value)
    metrics = result.train_metrics_clientapp[2]
    assert metrics["byz.kept-model"] == 1.0 and metrics["byz.replies"] == 6
    report = strategy.last_round_report
    assert report.kept_model and "krum needs n >= 7" in report.reason_kept


def test_all_replies_bad_keeps_the_model() -> None:
    roles = ["error", "raise", "nan"]
    strategy = Median(num_byzantine=0, **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    assert result.train_metrics_clientapp[1]["byz.excluded"] == 3
    np.testing.assert_array_equal(flat(from_record(result.arrays)), flat(start))


def test_too_few_replies_raise_when_asked() -> None:
    roles = ["honest"] * 6
    strategy = Krum(num_byzantine=2, on_too_few="raise", **_sampling(len(roles)))
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    with pytest.raises(TooFewRepliesError, match="krum needs n >= 7"):
        strategy.start(grid, to_record(initial_arrays()), num_rounds=1)


def test_undecodable_array_and_missing_record_are_excluded() -> None:
    """Replies crafted below the ArrayRecord API: garbage bytes, no ArrayRecord at all."""
    app = ClientApp()
    good = make_client_app()

    @app.train()
    def train(message: Message, context) -> Message:
        role = context.node_config["role"]
        if role == "garbage":
            bad = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=b"not numpy")
            record = ArrayRecord({"layer.weight": bad})
            return Message(RecordDict({"arrays": record}), reply_to=message)
        if role == "no-record":
            return Message(RecordDict({"m": MetricRecord({"x": 1.0})}), reply_to=message)
        if role == "wrong-type":  # the key is there, but holds metrics
            return Message(RecordDict({"arrays": MetricRecord({"x": 1.0})}), reply_to=message)
        return good(message, context)

    roles = ["honest"] * 5 + ["garbage", "no-record", "wrong-type"]
    strategy = Median(num_byzantine=3, **_sampling(len(roles)))
    grid = InProcessGrid(app, node_configs(roles))
    strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    reasons = strategy.last_round_report.excluded_reasons
    assert set(reasons) == {6, 7, 8}
    assert "cannot be decoded" in reasons[6]
    assert "no ArrayRecord under key 'arrays'" in reasons[7]
    assert "no ArrayRecord under key 'arrays'" in reasons[8]


def test_train_loss_is_the_median_over_accepted_honest_replies() -> None:
    roles = ["honest"] * 5 + ["nan", "flip"]
    strategy = Median(num_byzantine=2, **_sampling(len(roles)))
    strategy.honest_node_ids = [1, 2, 3, 4, 5]
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    # fake clients report train-loss = node id
    assert result.train_metrics_clientapp[1]["train-loss"] == pytest.approx(3.0)
    unknown = Median(num_byzantine=2, **_sampling(len(roles)))
    result = unknown.start(grid, to_record(initial_arrays()), num_rounds=1)
    # without honest ids: over every accepted reply (node 6 excluded for NaN): the median of
    # 1, 2, 3, 4, 5, 7 (a mean would let one client set it)
    assert result.train_metrics_clientapp[1]["train-loss"] == pytest.approx((3 + 4) / 2)


def test_evaluation_replies_with_errors_do_not_end_the_run() -> None:
    roles = ["honest"] * 3 + ["raise"]
    strategy = Median(
        num_byzantine=1, min_train_nodes=4, min_evaluate_nodes=4, min_available_nodes=4
    )
    grid = InProcessGrid(make_client_app(), node_configs(roles))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=1)
    # node 4 raises in evaluate too: its error reply is skipped; mean of the others' node ids
    assert result.evaluate_metrics_clientapp[1]["eval-loss"] == pytest.approx(2.0)


def test_a_reply_from_an_unknown_shape_model_never_crashes_the_strategy() -> None:
    strategy = Median(num_byzantine=0)
    strategy.aggregator.set_global(initial_arrays())
    from flwr_byz.strategy import Submission

    weird = {k: np.zeros(s[::-1] + (1,), np.float32) for k, s in SHAPES.items()}
    arrays, report = strategy.aggregator.aggregate(1, [Submission(3, weird), Submission(4, {})])
    assert report.kept_model and len(report.excluded) == 2
    assert arrays is strategy.aggregator.global_arrays


def test_huge_but_finite_replies_are_not_excluded_as_non_finite() -> None:
    """Rows of 3e38 overflow a float32 row sum; they are finite and reach the rule (and lose)."""
    strategy = Median(num_byzantine=2)
    start = initial_arrays()
    strategy.aggregator.set_global(start)
    from flwr_byz.strategy import Submission

    honest = [
        Submission(
            i,
            {
                **{k: (start[k] + honest_update(i, 1)[k]).astype(np.float32) for k in SHAPES},
                INT_KEY: start[INT_KEY],
            },
        )
        for i in range(1, 6)
    ]
    huge = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()} | {INT_KEY: start[INT_KEY]}
    arrays, report = strategy.aggregator.aggregate(1, [*honest, Submission(6, huge)])
    assert report.excluded == [] and report.accepted_node_ids == [1, 2, 3, 4, 5, 6]
    deltas = np.stack([flat(honest_update(i, 1)) for i in range(1, 6)] + [np.full(15, 3e38)])
    expected = flat(start) + np.median(deltas, axis=0)
    np.testing.assert_allclose(flat(arrays), expected, rtol=1e-5, atol=1e-5)


class _DroppingGrid(InProcessGrid):
    """Loses the replies of some nodes, like a timeout in a real deployment."""

    def __init__(self, *args, drop: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop = drop

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        return [r for r in replies if r.metadata.src_node_id not in self.drop]


def test_dropouts_are_excluded_counted_and_never_lower_f() -> None:
    roles = ["honest"] * 7
    strategy = Krum(num_byzantine=2, **_sampling(len(roles)))  # needs 7 for f=2
    grid = _DroppingGrid(make_client_app(), node_configs(roles), drop={4})
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    metrics = result.train_metrics_clientapp[1]
    assert (
        metrics["byz.replies"] == 6
        and metrics["byz.dropouts"] == 1
        and metrics["byz.excluded"] == 1
    )
    assert metrics["byz.excluded-nodes"] == [4] and metrics["byz.effective-f"] == 2
    report = strategy.last_round_report
    assert "no reply" in report.excluded_reasons[4]
    # a missing node may be an honest crash: f stays 2, so 6 replies are too few for Krum
    assert report.num_byzantine == 2 and report.kept_model and metrics["byz.kept-model"] == 1.0
    assert "krum needs n >= 7 usable replies for f=2, got n=6" in report.reason_kept
    assert 4 not in report.accepted_node_ids
    np.testing.assert_array_equal(flat(from_record(result.arrays)), flat(start))


def test_a_step_that_overflows_keeps_the_model() -> None:
    from flwr_byz.strategy import Average, Submission

    strategy = Average(update_mode="gradient", learning_rate=10.0, server_momentum=0.5)
    start = initial_arrays()
    strategy.aggregator.set_global(start)
    huge = {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()} | {INT_KEY: start[INT_KEY]}
    arrays, report = strategy.aggregator.aggregate(1, [Submission(1, huge)])
    assert report.kept_model and "overflowed" in report.reason_kept
    assert arrays is strategy.aggregator.global_arrays
    assert strategy.aggregator.optimizer.momentum_buffer is None  # not advanced by the failed step
