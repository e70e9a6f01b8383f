"""ServerApp: the quickstart's FedAvg, or a flwr-byz rule (run config ``strategy``).

``grid = adversary_grid(grid)`` is the one extra line omniscient attacks (``alie``, ``ipm``) need;
own-vector and data attacks run without it.
"""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from attacked_quickstart.task import Net, load_test_data, test
from flwr_byz.mods import adversary_grid
from flwr_byz.strategy import Median

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds and print the final test accuracy."""
    config = context.run_config
    grid = adversary_grid(grid)  # relays honest replies to omniscient attackers
    fraction_train = float(config["fraction-train"])
    if str(config["strategy"]) == "median":
        strategy = Median(num_byzantine=int(config["num-byzantine"]), fraction_train=fraction_train)
    else:
        strategy = FedAvg(fraction_train=fraction_train)
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
        Path(results_file).write_text(json.dumps({"test-accuracy": accuracy, "test-loss": loss}))


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Centralised evaluation on the server's held-out test set, after every round."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_test_data())
    return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})
