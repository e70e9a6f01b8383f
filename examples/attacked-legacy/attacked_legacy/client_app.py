"""ClientApp (legacy ``client_fn`` / ``NumPyClient`` API): plain Flower PyTorch training.

The only flwr-byz line is ``mods=[byzantine_mod()]``: which partitions attack and how comes from
the run config (``byzantine-partitions``, ``attack``, ``attack-options``).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, NDArrays, Scalar

from attacked_legacy.task import Net, load_data, test, train
from flwr_byz.mods import byzantine_mod


def get_weights(net: Net) -> NDArrays:
    """The model's parameters as NumPy arrays, in state_dict order."""
    return [value.cpu().numpy() for value in net.state_dict().values()]


def set_weights(net: Net, parameters: NDArrays) -> None:
    """Load NumPy arrays (state_dict order) into the model."""
    keys = net.state_dict().keys()
    net.load_state_dict(
        {key: torch.tensor(array) for key, array in zip(keys, parameters, strict=True)}
    )


class FlowerClient(NumPyClient):
    """Local training and evaluation on this node's partition; nothing Byzantine in here."""

    def __init__(self, partition_id: int, num_partitions: int, run_config: dict) -> None:
        self.net = Net()
        self.data = load_data(partition_id, num_partitions)
        self.local_epochs = int(run_config["local-epochs"])
        self.lr = float(run_config["lr"])

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict]:
        set_weights(self.net, parameters)
        loss = train(self.net, self.data, self.local_epochs, self.lr)
        weights = [np.asarray(w, dtype=np.float32) for w in get_weights(self.net)]
        return weights, len(self.data[1]), {"train-loss": loss}

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict]:
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.data)
        return loss, len(self.data[1]), {"eval-acc": accuracy}


def client_fn(context: Context):
    """Build the client of this node's partition."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    return FlowerClient(partition_id, num_partitions, dict(context.run_config)).to_client()


app = ClientApp(client_fn=client_fn, mods=[byzantine_mod()])  # was ClientApp(client_fn=client_fn)
torch.set_num_threads(1)
