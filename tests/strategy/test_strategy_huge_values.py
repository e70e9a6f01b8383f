"""A float64 federation: two Byzantine nodes replying with huge finite weights (1e300: they pass the
finiteness screen, their squares overflow) must not win, stall or end a round of a robust
strategy; the new model comes from the honest replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import BEYOND_STRATEGIES, STRATEGIES

SHAPE = (4, 5)
NODES = 11
BYZANTINE = 2
ROBUST = ("krum", "multi_krum", "median", "trimmed_mean", "phocas", "meamed", "medoid", "brute")
ROBUST += ("geometric_median", "centered_clipping", "dnc")


def _start() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SHAPE)


def _client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        model = message.content["arrays"]["w"].numpy()
        role = context.node_config["role"]
        if role.startswith("huge"):
            weights = np.full(SHAPE, 1e300)
            if role == "huge-opposite":  # far from the other one too
                weights[0] = -1e300
        else:
            rng = np.random.default_rng(context.node_id)
            weights = model + 0.1 * rng.standard_normal(SHAPE)
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(weights.astype(np.float64))}),
                "metrics": MetricRecord({"train-loss": 0.0, "num-examples": 10}),
            }
        )
        return Message(content, reply_to=message)

    return app


@pytest.mark.parametrize("name", ROBUST)
def test_float64_round_with_a_huge_byzantine_reply_aggregates_the_honest_ones(name: str) -> None:
    roles = ["huge", "huge-opposite"] + ["honest"] * (NODES - BYZANTINE)
    strategy = {**STRATEGIES, **BEYOND_STRATEGIES}[name](
        num_byzantine=BYZANTINE,
        fraction_evaluate=0.0,
        min_train_nodes=NODES,
        min_available_nodes=NODES,
    )
    grid = InProcessGrid(_client_app(), [{"role": role} for role in roles])
    start = _start()
    result = strategy.start(grid, ArrayRecord({"w": Array(start)}), num_rounds=1)

    report = strategy.last_round_report
    assert not report.kept_model, (name, report.reason_kept)
    assert report.excluded == []  # finite: not excluded, outvoted
    model = result.arrays["w"].numpy()
    assert model.dtype == np.float64
    assert np.isfinite(model).all()
    honest = np.stack(
        [
            start + 0.1 * np.random.default_rng(node).standard_normal(SHAPE)
            for node in range(3, NODES + 1)
        ]
    )
    # within the honest replies' range, widened by the clipping radius for centered clipping
    slack = 1e-9 + (100.0 / NODES if name == "centered_clipping" else 0.0)
    if name in ("geometric_median", "dnc"):
        slack = 0.5
    assert (model >= honest.min(axis=0) - slack).all() and (
        model <= honest.max(axis=0) + slack
    ).all()
