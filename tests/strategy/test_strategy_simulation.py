"""Smoke test through Flower's simulation engine (Ray): a robust strategy completes 2 rounds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from flwr_byz.strategy import Median

NUM_NODES, ROUNDS = 4, 2
RESULTS: list = []
STRATEGIES: list = []

client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Honest nodes add 1 to every weight; partition 3 sends a huge update."""
    arrays = message.content["arrays"]
    w = arrays["w"].numpy()
    delta = 1e9 if context.node_config["partition-id"] == 3 else 1.0
    out = ArrayRecord({"w": Array(w + np.float32(delta)), "steps": arrays["steps"]})
    metrics = MetricRecord({"train-loss": 0.5, "num-examples": 1})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=message)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = Median(
        num_byzantine=1,
        fraction_evaluate=0.0,
        min_train_nodes=NUM_NODES,
        min_available_nodes=NUM_NODES,
    )
    node_ids = sorted(grid.get_node_ids())
    strategy.honest_node_ids = node_ids  # only to exercise the metrics path
    initial = ArrayRecord(
        {"w": Array(np.zeros(5, np.float32)), "steps": Array(np.array(3, np.int64))}
    )
    STRATEGIES.append(strategy)
    RESULTS.append(strategy.start(grid, initial, num_rounds=ROUNDS))


def test_robust_strategy_runs_in_flowers_simulation_engine(monkeypatch) -> None:
    """30-60 s on 2 shared cores (Ray start-up), under the 60 s that would make it ``slow``."""
    from flwr.simulation import run_simulation

    # Ray workers unpickle the ClientApp by module name: let them import this test module.
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    RESULTS.clear()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=NUM_NODES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    assert len(RESULTS) == 1, "the ServerApp did not finish"
    result = RESULTS[0]
    # coordinate-wise median of 3 honest (+1) and 1 huge reply: +1 per round
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(5, float(ROUNDS)))
    assert int(result.arrays["steps"].numpy()) == 3
    assert result.train_metrics_clientapp[ROUNDS]["byz.replies"] == NUM_NODES
    assert result.train_metrics_clientapp[ROUNDS]["byz.excluded"] == 0
