"""The engine's stages, each alone on small inputs, and the driver as their composition:
screen -> stack -> rule -> step -> report (``flwr_byz.strategy.core``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
import torch

from flwr_byz import gars
from flwr_byz.layout import ModelLayout
from flwr_byz.strategy import core
from flwr_byz.strategy.core import (
    RobustAggregator,
    RuleResult,
    Screened,
    Stacked,
    Stepped,
    Submission,
    apply_rule,
    apply_step,
    screen,
    stack,
)
from flwr_byz.strategy.server_update import ServerOptimizer, ServerUpdateConfig


def _model() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 2), np.float32), "steps": np.array(3, np.int64)}


def _reply(value: float, steps: int = 3) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), value, np.float32), "steps": np.array(steps, np.int64)}


def _screened(rows: torch.Tensor, declared_f: int = 0, faulty: int = 0) -> Screened:
    accepted = tuple(Submission(node_id=i + 1, arrays=None) for i in range(rows.shape[0]))
    return Screened(
        accepted=accepted,
        rows=rows,
        excluded=tuple((100 + i, "bad") for i in range(faulty)),
        faulty=tuple(100 + i for i in range(faulty)),
        declared_f=declared_f,
        asked=rows.shape[0] + faulty,
    )


# ------------------------------------------------------------------ screen
def test_screen_excludes_wrong_shape_and_non_finite_and_lowers_f_for_content_only() -> None:
    layout = ModelLayout(_model())
    bad_shape = {"w": np.zeros((3, 2), np.float32), "steps": np.array(3, np.int64)}
    non_finite = _reply(1.0)
    non_finite["w"][0, 1] = np.nan
    non_finite["w"][1, 0] = np.inf
    subs = [
        Submission(1, _reply(1.0)),
        Submission(2, bad_shape),
        Submission(3, non_finite),
        Submission(4, None, problem="node error: boom", crashed=True),
        Submission(5, _reply(2.0)),
    ]
    screened = screen(layout, subs, missing_node_ids=[9], declared_f=3)
    assert isinstance(screened, Screened)
    assert screened.node_ids == [1, 5]
    assert screened.excluded == (
        (9, "no reply (dropped out or timed out)"),
        (2, "array 'w' has shape (3, 2), expected (2, 2)"),
        (4, "node error: boom"),
        (3, "non-finite update: 2 of 4 coordinates"),
    )
    # the wrong shape and the non-finite values prove a fault; the crash and the dropout do not
    assert screened.faulty == (2, 3)
    assert screened.num_byzantine == 1
    assert screened.asked == 6
    assert torch.equal(screened.rows, torch.tensor([[1.0] * 4, [2.0] * 4]))


def test_screen_subtracts_minus_and_names_gradients() -> None:
    layout = ModelLayout(_model())
    bad = _reply(1.0)
    bad["w"][0, 0] = np.inf
    screened = screen(
        layout,
        [Submission(1, _reply(1.0)), Submission(2, bad)],
        declared_f=0,
        minus=np.full(4, 0.5, np.float32),
        what="gradient",
    )
    assert screened.excluded == ((2, "non-finite gradient: 1 of 4 coordinates"),)
    assert screened.num_byzantine == 0  # never below 0
    assert torch.equal(screened.rows, torch.full((1, 4), 0.5))


def test_screen_of_nothing_gives_an_empty_matrix() -> None:
    screened = screen(ModelLayout(_model()), [], missing_node_ids=[1, 2], declared_f=1)
    assert screened.rows.shape == (0, 4) and screened.accepted == ()
    assert screened.num_byzantine == 1 and screened.faulty == ()


# ------------------------------------------------------------------ stack
def test_stack_gives_the_rows_in_submission_order_on_the_device() -> None:
    layout = ModelLayout(_model())
    subs = [Submission(7, _reply(3.0)), Submission(2, _reply(1.0)), Submission(5, _reply(2.0))]
    screened = screen(layout, subs)
    theta = torch.arange(4, dtype=torch.float32)
    stacked = stack(screened, theta, torch.device("cpu"))
    assert isinstance(stacked, Stacked)
    assert stacked.node_ids == (7, 2, 5) and stacked.n == 3
    assert stacked.vectors.shape == (3, 4)
    assert torch.equal(stacked.vectors[:, 0], torch.tensor([3.0, 1.0, 2.0]))
    assert torch.equal(stacked.theta, theta)


# ------------------------------------------------------------------ rule
def test_rule_stage_reports_too_few_below_the_rule_minimum() -> None:
    calls: list[int] = []

    def run(vectors: torch.Tensor, f: int) -> gars.Aggregation:
        calls.append(f)
        return gars.get("krum").aggregate(vectors, f)

    rows = torch.randn(4, 3, dtype=torch.float64)
    screened = _screened(rows, declared_f=2, faulty=1)  # f' = 1, krum needs n >= 5
    stacked = stack(screened, torch.zeros(3, dtype=torch.float64), torch.device("cpu"))
    ruled = apply_rule(run, stacked, screened, gars.get("krum").min_n(1), "krum")
    assert isinstance(ruled, RuleResult)
    assert ruled.aggregation is None and ruled.seconds == 0.0 and calls == []
    assert ruled.reason == (
        "krum needs n >= 5 usable replies for f=1, got n=4 (1 excluded or missing of 5; "
        "declared f=2, 1 proven faulty)"
    )


def test_rule_stage_runs_the_rule_with_the_effective_f() -> None:
    rows = torch.randn(5, 3, dtype=torch.float64)
    screened = _screened(rows, declared_f=2, faulty=1)
    stacked = stack(screened, torch.zeros(3, dtype=torch.float64), torch.device("cpu"))
    rule = gars.get("krum")
    ruled = apply_rule(lambda v, f: rule.aggregate(v, f), stacked, screened, 5, "krum")
    assert ruled.reason is None and ruled.aggregation is not None and ruled.seconds >= 0.0
    assert torch.equal(ruled.aggregation.vector, rule(rows, 1))


def test_rule_stage_turns_a_refusal_a_failure_and_a_non_finite_aggregate_into_reasons() -> None:
    rows = torch.ones(3, 2)
    screened = _screened(rows)
    stacked = stack(screened, torch.zeros(2), torch.device("cpu"))

    def refuse(vectors: torch.Tensor, f: int) -> gars.Aggregation:
        raise ValueError("no way")

    refused = apply_rule(refuse, stacked, screened, 1, "r")
    assert refused.aggregation is None and refused.reason == "r refused the round: no way"

    def failed(vectors: torch.Tensor, f: int) -> gars.Aggregation:
        raise torch.linalg.LinAlgError("the eigen-decomposition did not converge")

    broken = apply_rule(failed, stacked, screened, 1, "r")
    assert broken.aggregation is None
    assert broken.reason == (
        "r failed on this round's input (LinAlgError: the eigen-decomposition did not converge)"
    )

    def bug(vectors: torch.Tensor, f: int) -> gars.Aggregation:
        raise TypeError("a programming error")

    with pytest.raises(TypeError, match="a programming error"):  # not hidden as a refusal
        apply_rule(bug, stacked, screened, 1, "r")

    def overflow(vectors: torch.Tensor, f: int) -> gars.Aggregation:
        return gars.Aggregation(torch.full((2,), float("inf")), None, None)

    bad = apply_rule(overflow, stacked, screened, 1, "r")
    assert bad.aggregation is None and bad.reason == "r returned a non-finite aggregate"


# ------------------------------------------------------------------ step
def test_step_stage_refuses_a_non_finite_model_and_keeps_the_momentum_buffer() -> None:
    optimizer = ServerOptimizer(ServerUpdateConfig(server_momentum=0.9))
    buffer = torch.tensor([1.0, 2.0], dtype=torch.float64)
    optimizer.momentum_buffer = buffer
    theta = torch.tensor([1e308, 1e308], dtype=torch.float64)
    huge = gars.Aggregation(torch.tensor([1.7e308, 1.7e308], dtype=torch.float64), None, None)
    stepped = apply_step(optimizer, theta, RuleResult(huge, None, 0.1), 1)
    assert isinstance(stepped, Stepped)
    assert stepped.new_theta is None and stepped.aggregation is None
    assert stepped.reason == "the server step overflowed to non-finite values"
    assert optimizer.momentum_buffer is buffer


def test_step_stage_steps_and_passes_a_missing_aggregate_through() -> None:
    optimizer = ServerOptimizer(ServerUpdateConfig())
    theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    none = apply_step(optimizer, theta, RuleResult(None, "too few", 0.0), 1)
    assert none == Stepped(None, None, "too few")
    aggregation = gars.Aggregation(torch.tensor([0.5, -0.5], dtype=torch.float64), None, None)
    stepped = apply_step(optimizer, theta, RuleResult(aggregation, None, 0.0), 1)
    assert stepped.aggregation is aggregation and stepped.reason is None
    assert stepped.new_theta is not None  # weights mode, learning rate 1: theta + aggregate
    assert torch.equal(stepped.new_theta, torch.tensor([1.5, 0.5], dtype=torch.float64))


# ------------------------------------------------------------------ driver
def _round_inputs() -> tuple[dict[str, np.ndarray], list[Submission]]:
    model: dict[str, np.ndarray] = {"w": np.zeros((2, 3), np.float32), "steps": np.array(3)}
    rng = np.random.default_rng(0)
    subs = []
    for node in range(1, 9):
        w = rng.standard_normal((2, 3)).astype(np.float32)
        if node == 6:
            w[0, 0] = np.nan
        arrays = {"w": w, "steps": np.array(3, np.int64)}
        if node == 7:
            arrays = {"w": w[:1], "steps": np.array(3, np.int64)}
        subs.append(Submission(node, arrays, metrics={"loss": float(node)}))
    return model, subs


@pytest.mark.parametrize("rule", ["krum", "median", "bulyan"])
def test_driver_equals_the_stages_called_by_hand(rule: str) -> None:
    model, subs = _round_inputs()
    missing, dropped = [9], [(10, "duplicate reply")]
    options: dict[str, Any] = {"device": "cpu", "honest_node_ids": range(1, 6)}
    driven = RobustAggregator(rule, 2, **options)
    driven.set_global(model)
    arrays, report = driven.aggregate(1, subs, missing, dropped)

    by_hand = RobustAggregator(rule, 2, **options)
    by_hand.set_global(model)
    layout = by_hand.layout
    assert layout is not None
    host_theta = layout.flatten(model)
    screened = screen(layout, subs, missing, 2, minus=host_theta.numpy())
    stacked = stack(screened, host_theta, by_hand.device)
    ruled = apply_rule(
        lambda v, f: by_hand._run_rule(v, f, True, 1),
        stacked,
        screened,
        by_hand._min_n(screened.num_byzantine),
        by_hand.label,
    )
    stepped = apply_step(by_hand.optimizer, stacked.theta, ruled, 1)
    arrays2, report2 = by_hand._report(1, subs, missing, dropped, screened, stacked, ruled, stepped)

    assert arrays.keys() == arrays2.keys()
    for key in arrays:
        assert np.array_equal(arrays[key], arrays2[key])
    timing = "agg-seconds"
    assert {**report.diagnostics, timing: 0} == {**report2.diagnostics, timing: 0}
    assert dataclasses.replace(report, diagnostics={}, metrics={}) == dataclasses.replace(
        report2, diagnostics={}, metrics={}
    )
    assert report.faulty_node_ids == [7, 6] and report.num_byzantine == 0
    assert by_hand.last_round_report is report2


def test_driver_keeps_the_model_and_logs_to_the_flwr_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model, subs = _round_inputs()
    aggregator = RobustAggregator("krum", 3, device="cpu")
    aggregator.set_global(model)
    with caplog.at_level(logging.INFO, logger="flwr"):
        arrays, report = aggregator.aggregate(1, subs[:4])
    assert report.kept_model and arrays is aggregator.global_arrays
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("flwr")]
    assert any("model kept unchanged: krum needs n >= 9" in m for m in messages)
    assert core._LOG.name == "flwr.byz" and core._LOG.parent is logging.getLogger("flwr")
