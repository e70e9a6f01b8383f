"""ServerApp of the demo: the `flwr new` PyTorch template, FedAvg swapped for flwr-byz's Krum."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from dropin_message_api.task import Net, load_test_data, test
from flwr_byz.strategy import Krum

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-server-rounds` rounds of Byzantine-resilient federated learning."""
    num_rounds = int(context.run_config["num-server-rounds"])
    fraction_train = float(context.run_config["fraction-train"])
    lr = float(context.run_config["lr"])

    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # The one line that changes: was `strategy = FedAvg(fraction_train=fraction_train)`.
    strategy = Krum(
        num_byzantine=int(context.run_config["num-byzantine"]), fraction_train=fraction_train
    )

    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=central_evaluate,
    )

    final_model = Net()
    final_model.load_state_dict(result.arrays.to_torch_state_dict())
    loss, accuracy = test(final_model, load_test_data())
    print(f"final test accuracy {accuracy:.4f} loss {loss:.4f}")
    if results_file := str(context.run_config["results-file"]):
        Path(results_file).write_text(json.dumps({"test-accuracy": accuracy, "test-loss": loss}))


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Centralised evaluation on the server's held-out test set, after every round."""
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, load_test_data())
    return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})
