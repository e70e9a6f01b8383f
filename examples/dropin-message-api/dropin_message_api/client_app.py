"""ClientApp of the demo: plain Flower PyTorch training; listed partitions act Byzantine."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dropin_message_api.task import Net, load_data, parse_partitions, test, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received model on the local partition and reply with the new weights."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    received = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    data = load_data(partition_id, num_partitions)
    loss = train(
        model, data, int(context.run_config["local-epochs"]), float(context.run_config["lr"])
    )
    state = model.state_dict()
    if partition_id in parse_partitions(str(context.run_config["byzantine-partitions"])):
        # A simple Byzantine node: send the received model moved far against its honest update.
        scale = float(context.run_config["attack-scale"])
        state = {name: received[name] - scale * (state[name] - received[name]) for name in state}
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(data[1])})
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local partition."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_data(partition_id, num_partitions)
    loss, accuracy = test(model, data)
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(data[1])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


torch.set_num_threads(1)
