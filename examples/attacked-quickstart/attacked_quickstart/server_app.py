"""ServerApp: the quickstart's FedAvg, or a flwr-byz rule (run config ``strategy``).

``grid = adversary_grid(grid)`` is the one extra line omniscient attacks (``alie``, ``ipm``) need;
own-vector and data attacks run without it (the example keeps it: the wrapped grid also counts
the replies the mod marked as attacked). The defence is the strategy swap:
``FedAvg(...)`` -> ``Krum(num_byzantine=..., ...)`` or ``Median(...)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from attacked_quickstart.task import Net, load_test_data, test
from flwr_byz.mods import adversary_grid
from flwr_byz.strategy import Krum, Median

app = ServerApp()
ROBUST = {"krum": Krum, "median": Median}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds and print the final test accuracy."""
    config = context.run_config
    grid = adversary_grid(grid)  # relays honest replies to omniscient attackers
    sampling = {
        "fraction_train": float(config["fraction-train"]),
        "fraction_evaluate": float(config["fraction-evaluate"]),
        "min_available_nodes": int(config["min-nodes"]),
    }
    name = str(config["strategy"])
    if name in ROBUST:  # the defence: one line, FedAvg(...) -> Krum(num_byzantine=..., ...)
        strategy = ROBUST[name](num_byzantine=int(config["num-byzantine"]), **sampling)
    elif name == "fedavg":
        strategy = FedAvg(**sampling)
    else:
        raise ValueError(f"strategy must be 'fedavg', 'krum' or 'median', got {name!r}")
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        train_config=ConfigRecord({"lr": float(config["lr"])}),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=central_evaluate,
    )
    model = Net()
    model.load_state_dict(result.arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_test_data())
    print(f"final test accuracy {accuracy:.4f} loss {loss:.4f}")
    if results_file := str(config["results-file"]):
        report = getattr(strategy, "last_round_report", None)
        results = {
            "strategy": name,
            "test-accuracy": accuracy,
            "test-loss": loss,
            # from the grid: who sent replies the mod attacked, who asked for the honest vectors
            "attacked-rounds": {str(r): nodes for r, nodes in grid.attacked_rounds.items()},
            "omniscient-node-ids": sorted(grid.byzantine_node_ids),
            # Krum's choice in the last round (None for FedAvg and Median)
            "selected-node-ids": getattr(report, "selected_node_ids", None),
            # the clients' own train metrics, as Flower's Result holds them
            "train-metrics": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        }
        Path(results_file).write_text(json.dumps(results))


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Centralised evaluation on the server's held-out test set, after every round."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_test_data())
    return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})
