"""The round's fast path: participation only when used, deltas subtracted while stacking, the flat
global model kept; aggregates bit-identical to the plain ``flwr_byz.gars`` functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from flwr_byz import gars
from flwr_byz.layout import ModelLayout
from flwr_byz.strategy.core import RobustAggregator, Submission
from flwr_byz.strategy.server_update import ServerUpdateConfig

N, F = 11, 2  # Bulyan needs n >= 4f + 3


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((7, 13), dtype=np.float32),
        "steps": np.array(3, dtype=np.int64),  # not aggregated
        "b": rng.standard_normal(29, dtype=np.float32),
    }


def _replies(model: dict[str, np.ndarray], seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N):
        scale = 5.0 if i >= N - F else 0.1  # the last f replies far away
        out.append(
            {
                k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
                if v.dtype.kind == "f"
                else v.copy()
                for k, v in model.items()
            }
        )
    return out


def _deltas(model: dict[str, np.ndarray], replies: list[dict[str, np.ndarray]]) -> torch.Tensor:
    keys = [k for k, v in model.items() if v.dtype.kind == "f"]
    flat = np.concatenate([model[k].reshape(-1) for k in keys])
    rows = [np.concatenate([r[k].reshape(-1) for k in keys]) - flat for r in replies]
    return torch.from_numpy(np.stack(rows))


def _run(
    name: str, model: dict[str, np.ndarray], replies: list[dict[str, np.ndarray]], **kwargs: Any
) -> tuple[RobustAggregator, torch.Tensor, dict[str, np.ndarray], Any]:
    """One round; returns the aggregator, the aggregate the server step received, the new
    arrays and the report."""
    aggregator = RobustAggregator(name, F, device="cpu", **kwargs)
    seen: list[torch.Tensor] = []
    step = aggregator.optimizer.step

    def spy(theta: torch.Tensor, aggregate: torch.Tensor, server_round: int) -> torch.Tensor:
        seen.append(aggregate.clone())
        return step(theta, aggregate, server_round)

    aggregator.optimizer.step = spy  # type: ignore[method-assign]
    aggregator.set_global(model)
    subs = [Submission(node_id=i + 1, arrays=r) for i, r in enumerate(replies)]
    new_arrays, report = aggregator.aggregate(1, subs)
    assert not report.kept_model and len(seen) == 1
    return aggregator, seen[0], new_arrays, report


@pytest.mark.parametrize("name", gars.NAMES)
def test_round_aggregate_is_the_plain_function_bit_for_bit(name: str) -> None:
    model = _model(np.random.default_rng(0))
    replies = _replies(model)
    deltas = _deltas(model, replies)
    _, aggregate, new_arrays, report = _run(name, model, replies)
    expected = gars.get(name)(deltas, F)
    assert torch.equal(aggregate, expected)
    flat_global = ModelLayout(model).flatten(model)
    flat_new = ModelLayout(model).flatten(new_arrays)
    assert torch.equal(flat_new, flat_global - 1.0 * (-expected))
    assert np.array_equal(new_arrays["steps"], model["steps"])
    assert report.participation == {}  # not asked for, no honest ids
    assert "byz.byzantine-influence" not in report.metrics


@pytest.mark.parametrize("name", gars.NAMES)
def test_tracked_round_matches_rule_aggregate(name: str) -> None:
    model = _model(np.random.default_rng(0))
    replies = _replies(model)
    deltas = _deltas(model, replies)
    reference = gars.get(name).aggregate(deltas, F)
    for kwargs in ({"track_participation": True}, {"honest_node_ids": range(1, N - F + 1)}):
        _, aggregate, _, report = _run(name, model, replies, **kwargs)
        assert torch.equal(aggregate, reference.vector)
        assert list(report.participation) == list(range(1, N + 1))
        assert list(report.participation.values()) == reference.participation.tolist()
        if "honest_node_ids" in kwargs:
            byzantine = float(reference.participation[N - F :].sum())
            assert report.metrics["byz.byzantine-influence"] == pytest.approx(byzantine)


@pytest.mark.parametrize("name", [name for name in gars.NAMES if gars.get(name).selects])
def test_selection_is_reported_with_and_without_participation(name: str) -> None:
    model = _model(np.random.default_rng(0))
    replies = _replies(model)
    reference = gars.get(name).aggregate(_deltas(model, replies), F)
    expected = [int(i) + 1 for i in reference.selected.tolist()]
    for track in (False, True):
        _, _, _, report = _run(name, model, replies, track_participation=track)
        assert report.selected_node_ids == expected
        assert report.metrics["byz.selected-nodes"] == expected


@pytest.mark.parametrize("name", ["trimmed_mean", "bulyan", "krum"])
def test_excluded_reply_leaves_the_plain_function_on_the_rest(name: str) -> None:
    model = _model(np.random.default_rng(0))
    replies = _replies(model) + [_replies(model, seed=2)[0]]
    replies[-1]["w"][0, 0] = np.nan  # faulty content: excluded, f lowered to F - 1
    aggregator = RobustAggregator(name, F + 1, device="cpu")
    aggregator.set_global(model)
    subs = [Submission(node_id=i + 1, arrays=r) for i, r in enumerate(replies)]
    new_arrays, report = aggregator.aggregate(1, subs)
    assert report.faulty_node_ids == [N + 1] and report.num_byzantine == F
    expected = gars.get(name)(_deltas(model, replies[:N]), F)
    layout = ModelLayout(model)
    assert torch.equal(layout.flatten(new_arrays), layout.flatten(model) + expected)


def test_gradient_mode_aggregates_the_replies_themselves() -> None:
    model = _model(np.random.default_rng(0))
    replies = _replies(model)
    layout = ModelLayout(model)
    rows = layout.stack(replies)
    update = ServerUpdateConfig(update_mode="gradient", learning_rate=0.5)
    aggregator = RobustAggregator("median", F, device="cpu", update=update)
    aggregator.set_global(model)
    new_arrays, _ = aggregator.aggregate(1, [Submission(i + 1, r) for i, r in enumerate(replies)])
    expected = layout.flatten(model) - 0.5 * gars.median(rows.clone(), F)
    assert torch.equal(layout.flatten(new_arrays), expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4"])
def test_stack_minus_equals_stack_then_subtract(dtype: Any) -> None:
    rng = np.random.default_rng(3)
    model = {
        "a": rng.standard_normal((4, 5)).astype(dtype),
        "b": rng.standard_normal(6).astype(np.float32),
    }
    layout = ModelLayout(model)
    replies = [{k: (v + rng.standard_normal(v.shape)).astype(v.dtype) for k, v in model.items()}]
    replies *= 3
    theta = layout.flatten(model)
    fused = layout.stack(replies, minus=theta.numpy())
    assert torch.equal(fused, layout.stack(replies) - theta)
    with pytest.raises(ValueError, match="minus must be"):
        layout.stack(replies, minus=theta.numpy()[:-1])


def test_flat_global_is_kept_for_the_round_and_renewed_by_set_global(monkeypatch) -> None:
    model = _model(np.random.default_rng(0))
    replies = _replies(model)
    aggregator = RobustAggregator("median", F, device="cpu")
    calls = []
    flatten = ModelLayout.flatten

    def counting(self: ModelLayout, arrays: Any, device: Any = None) -> torch.Tensor:
        calls.append(1)
        return flatten(self, arrays, device)

    monkeypatch.setattr(ModelLayout, "flatten", counting)
    aggregator.set_global(model)
    subs = [Submission(i + 1, r) for i, r in enumerate(replies)]
    first, _ = aggregator.aggregate(1, subs)
    again, _ = aggregator.aggregate(1, subs)
    assert len(calls) == 1
    assert all(np.array_equal(first[k], again[k]) for k in model)
    aggregator.set_global(first)
    second, _ = aggregator.aggregate(2, subs)
    assert len(calls) == 2
    assert not np.array_equal(second["w"], first["w"])


def test_stack_reports_finite_rows_exactly() -> None:
    big = np.finfo(np.float32).max
    model = {"a": np.zeros((3, 200_000), np.float32), "b": np.zeros(5, np.float16)}
    layout = ModelLayout(model)
    rows = []
    for fill in (0.5, big, np.nan, np.inf):  # big: finite, but its sums overflow
        reply = {"a": np.full((3, 200_000), fill, np.float32), "b": np.zeros(5, np.float16)}
        rows.append(reply)
    rows.append({"a": np.zeros((3, 200_000), np.float32), "b": np.array([0, 0, -np.inf, 0, 0])})
    rows[-1]["b"] = rows[-1]["b"].astype(np.float16)
    finite = np.zeros(len(rows), np.bool_)
    stacked = layout.stack(rows, finite=finite)
    assert finite.tolist() == [True, True, False, False, False]
    assert finite.tolist() == torch.isfinite(stacked).all(dim=1).tolist()
    with pytest.raises(ValueError, match="finite must be"):
        layout.stack(rows, finite=np.zeros(2, np.bool_))


@pytest.mark.parametrize("api", ["message", "legacy"])
def test_strategy_keyword_track_participation_reaches_the_engine(api: str) -> None:
    """``track_participation`` on a strategy class turns the per-round participation on."""
    from flwr_byz.strategy import Median, legacy

    cls = Median if api == "message" else legacy.Median
    model = _model(np.random.default_rng(0))
    replies = _replies(model)
    subs = [Submission(node_id=i + 1, arrays=r) for i, r in enumerate(replies)]
    for track in (False, True):
        strategy = cls(num_byzantine=F, device="cpu", track_participation=track)
        strategy.aggregator.set_global(model)
        _, report = strategy.aggregator.aggregate(1, subs)
        # Median participation: each coordinate's kept values, so the shares sum to one.
        assert bool(report.participation) is track
        if track:
            assert sum(report.participation.values()) == pytest.approx(1.0)
