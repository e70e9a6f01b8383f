"""ServerApp (legacy ``server_fn`` API): FedAvg, or flwr-byz's legacy Krum / Median.

Two one-line changes to a plain legacy app: the strategy swap ``FedAvg(...)`` ->
``Krum(num_byzantine=..., ...)`` (the defence), and ``app = adversary_app(ServerApp(...))``,
which only omniscient attacks (``alie``, ``ipm``, ...) need: it relays the round's honest
replies to the Byzantine nodes (the example keeps it for every attack: the wrapped grid also
counts the replies the mod marked as attacked, which the results file reports).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.common import Context, Metrics, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from attacked_legacy.task import Net, load_test_data, test
from flwr_byz.mods import adversary_app
from flwr_byz.strategy.legacy import Krum, Median

ROBUST = {"krum": Krum, "median": Median}


def server_fn(context: Context) -> ServerAppComponents:
    """Build the strategy and the server config from the run config."""
    config = context.run_config
    num_rounds = int(config["num-server-rounds"])
    results_file = str(config["results-file"])
    name = str(config["strategy"])
    fit_metrics: dict[int, Metrics] = {}

    def train_loss(metrics: list[tuple[int, Metrics]]) -> Metrics:
        """The example-weighted mean of the clients' train loss (as the quickstart does)."""
        total = sum(num for num, _ in metrics)
        loss = sum(num * float(m["train-loss"]) for num, m in metrics) / max(total, 1)
        fit_metrics[len(fit_metrics) + 1] = {"train-loss": loss, "clients": len(metrics)}
        return {"train-loss": loss}

    def evaluate(server_round: int, parameters: NDArrays, config: dict[str, Scalar]):
        """Centralised evaluation on the server's test set; the last round writes `results-file`."""
        net = Net()
        keys = net.state_dict().keys()
        net.load_state_dict({k: torch.tensor(a) for k, a in zip(keys, parameters, strict=True)})
        loss, accuracy = test(net, load_test_data())
        if results_file and server_round == num_rounds:
            write_results(results_file, name, strategy, accuracy, loss, fit_metrics)
        return loss, {"test-accuracy": accuracy}

    kwargs = {
        "fraction_fit": float(config["fraction-train"]),
        "fraction_evaluate": float(config["fraction-evaluate"]),
        "min_available_clients": int(config["min-nodes"]),
        "initial_parameters": ndarrays_to_parameters(
            [value.numpy() for value in Net().state_dict().values()]
        ),
        "evaluate_fn": evaluate,
        "fit_metrics_aggregation_fn": train_loss,
    }
    if name in ROBUST:  # the defence: one line, FedAvg(...) -> Krum(num_byzantine=..., ...)
        strategy = ROBUST[name](num_byzantine=int(config["num-byzantine"]), **kwargs)
    elif name == "fedavg":
        strategy = FedAvg(**kwargs)
    else:
        raise ValueError(f"strategy must be 'fedavg', 'krum' or 'median', got {name!r}")
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


def write_results(path, name, strategy, accuracy, loss, fit_metrics) -> None:
    """What the tests read: accuracy, what the grid saw of the attack, the clients' metrics."""
    grid = app.relay_grid
    report = getattr(strategy, "last_round_report", None)
    results = {
        "strategy": name,
        "test-accuracy": accuracy,
        "test-loss": loss,
        "attacked-rounds": {str(r): nodes for r, nodes in grid.attacked_rounds.items()},
        "omniscient-node-ids": sorted(grid.byzantine_node_ids),
        "selected-node-ids": getattr(report, "selected_node_ids", None),
        "train-metrics": {str(r): m for r, m in fit_metrics.items()},
    }
    Path(path).write_text(json.dumps(results))


app = adversary_app(ServerApp(server_fn=server_fn))  # was ServerApp(server_fn=server_fn)
