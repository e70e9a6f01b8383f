"""Helpers for the client tests: grids, hand-built train messages, reference gradients."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

import flwr_byz.clients.app as client_app
from flwr_byz import data, models
from flwr_byz.inprocess import InProcessGrid

BASE_CONFIG: dict[str, Any] = {
    "dataset": "mnist5k",
    "model": "mlp",
    "seed": 3,
    "batch-size": 83,
    "learning-rate": 0.5,
    "attack": "none",
    "num-byzantine": 0,
}


class ThreadedGrid(InProcessGrid):
    """``InProcessGrid`` that runs at most ``workers`` ClientApps at once, in message order, like
    Flower's simulation engine with few workers (2 on this machine)."""

    def __init__(self, *args: Any, workers: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workers = workers

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        ids = []
        for message in messages:
            message_id = f"threaded-{next(self._message_counter)}"
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            replies = list(pool.map(self._deliver, messages))
        self._replies.update(zip(ids, replies, strict=True))
        return ids


def make_grid(n: int, run_config: dict[str, Any], threaded: bool = False, **kw: Any):
    """A grid of ``n`` nodes (ids 1..n, partition ids 0..n-1) running
    ``flwr_byz.clients.app:app``."""
    config = {**BASE_CONFIG, **run_config}
    cls = ThreadedGrid if threaded else InProcessGrid
    return cls(client_app.app, [{} for _ in range(n)], config, **kw)


def initial_arrays(seed: int = 0) -> ArrayRecord:
    """The MLP's initial weights as Flower arrays."""
    return ArrayRecord(models.build("mlp", seed=seed).state_dict())


def train_messages(
    node_ids: Iterable[int], arrays: ArrayRecord, rnd: int, lr: float = 0.5, **extra: Any
) -> list[Message]:
    """One train message per node, as FedAvg builds them (shared content)."""
    config = ConfigRecord({"server-round": rnd, "learning-rate": lr, **extra})
    content = RecordDict({"arrays": arrays, "config": config})
    return [Message(content, node, MessageType.TRAIN) for node in node_ids]


def run_round(grid, arrays: ArrayRecord, rnd: int, lr: float = 0.5, **extra: Any):
    """Send a train round to every node; ``{node_id: reply}`` (errors raise, naming the node)."""
    replies = grid.send_and_receive(train_messages(grid.get_node_ids(), arrays, rnd, lr, **extra))
    out = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise AssertionError(f"node {node} failed: {reply.error.reason}")
        out[node] = reply
    return out


def reply_vector(reply: Message) -> torch.Tensor:
    """The reply's arrays as one flat float64 vector (record key order)."""
    arrays = reply.content["arrays"]
    return torch.cat([torch.from_numpy(a.numpy()).reshape(-1).double() for a in arrays.values()])


def reference_gradient(
    arrays: ArrayRecord,
    seed: int,
    partition: int,
    rnd: int,
    batch_size: int = 83,
    flip_labels: bool = False,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """Independent float64 gradient of the MLP's NLL on the node's mini-batch (shared partition).

    The forward pass is written out (784-100-10, ReLU, log-softmax) rather than taken from
    ``flwr_byz.models``; only the batch indices come from ``flwr_byz.data.sample_batch``."""
    split = data.load_dataset("mnist5k", seed=seed)
    indices = torch.arange(split.train_y.numel())
    picks = data.sample_batch(indices, batch_size, seed, partition, rnd)
    x = split.train_x[picks].reshape(len(picks), -1).double()
    y = split.train_y[picks]
    if flip_labels:
        y = split.num_classes - 1 - y
    state = {k: torch.from_numpy(a.numpy().copy()).double() for k, a in arrays.items()}
    keys = list(state)  # [w1, b1, w2, b2] in the model's order
    params = [state[k].requires_grad_(True) for k in keys]
    w1, b1, w2, b2 = params
    hidden = torch.relu(x @ w1.T + b1)
    logits = hidden @ w2.T + b2
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    loss = -log_probs[torch.arange(len(y)), y].mean()
    grads = torch.autograd.grad(loss, params)
    flat = torch.cat([g.reshape(-1) for g in grads])
    if weight_decay:
        flat = flat + weight_decay * torch.cat([p.detach().reshape(-1) for p in params])
    return flat
