"""ClientApp: plain Flower PyTorch training; ``byzantine_mod`` makes the listed partitions attack.

The only flwr-byz line is ``mods=[byzantine_mod()]``: which partitions attack and how comes from
the run config (``byzantine-partitions``, ``attack``, ``attack-options``).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from attacked_quickstart.task import Net, load_data, test, train
from flwr_byz.mods import byzantine_mod

app = ClientApp(mods=[byzantine_mod()])


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition and reply with the new weights."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_data(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    loss = train(
        model,
        data,
        int(context.run_config["local-epochs"]),
        float(context.run_config["lr"]),
        context,
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(data[1])})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local partition."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_data(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    loss, accuracy = test(model, data)
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(data[1])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


torch.set_num_threads(1)
