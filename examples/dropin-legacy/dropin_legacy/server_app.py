"""ServerApp of the demo (legacy `server_fn` API): FedAvg swapped for legacy.Krum of flwr-byz."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.common import Context, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from dropin_legacy.task import Net, load_test_data, test
from flwr_byz.strategy.legacy import Krum


def server_fn(context: Context) -> ServerAppComponents:
    """Build the strategy and the server config from the run config."""
    num_rounds = int(context.run_config["num-server-rounds"])
    fraction_fit = float(context.run_config["fraction-train"])
    results_file = str(context.run_config["results-file"])
    initial = [value.numpy() for value in Net().state_dict().values()]

    def evaluate(server_round: int, parameters: NDArrays, config: dict[str, Scalar]):
        """Centralised evaluation on the server's test set; the last round writes `results-file`."""
        net = Net()
        keys = net.state_dict().keys()
        net.load_state_dict({k: torch.tensor(a) for k, a in zip(keys, parameters, strict=True)})
        loss, accuracy = test(net, load_test_data())
        if results_file and server_round == num_rounds:
            Path(results_file).write_text(
                json.dumps({"test-accuracy": accuracy, "test-loss": loss})
            )
        return loss, {"test-accuracy": accuracy}

    # The one line that changes: was `strategy = FedAvg(fraction_fit=..., ...)`.
    strategy = Krum(
        num_byzantine=int(context.run_config["num-byzantine"]),
        fraction_fit=fraction_fit,
        fraction_evaluate=0.0,
        min_available_clients=2,
        initial_parameters=ndarrays_to_parameters(initial),
        evaluate_fn=evaluate,
    )
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
