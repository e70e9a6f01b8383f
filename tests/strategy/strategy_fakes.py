"""Small fake ClientApps and a float64 reference for the strategy tests.

A node's behaviour comes from ``context.node_config["role"]``. Honest nodes send a deterministic
update around a common direction (a function of round and node id that the tests recompute in
float64); the others misbehave in one way each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

#: The model every test uses: two float arrays and an integer buffer.
SHAPES: dict[str, tuple[int, ...]] = {"layer.weight": (4, 3), "layer.bias": (3,)}
INT_KEY = "bn.num_batches_tracked"
HONEST_SPREAD = 0.05

ROLES_BAD_REPLY = (
    "error",
    "raise",
    "missing-key",
    "extra-key",
    "wrong-shape",
    "wrong-dtype",
    "nan",
)


def initial_arrays() -> dict[str, np.ndarray]:
    """The initial global model (float32 arrays + an int64 buffer)."""
    rng = np.random.default_rng(1234)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    arrays[INT_KEY] = np.array(17, dtype=np.int64)
    return arrays


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def honest_update(node_id: int, server_round: int) -> dict[str, np.ndarray]:
    """Deterministic honest update (delta or gradient) of a node in a round, float64."""
    common = np.random.default_rng([7, server_round])
    own = np.random.default_rng([11, server_round, node_id])
    return {
        k: common.standard_normal(s) + HONEST_SPREAD * own.standard_normal(s)
        for k, s in SHAPES.items()
    }


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Float arrays of a model as one float64 vector (SHAPES order)."""
    return np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in SHAPES])


def _reply(message: Message, arrays: dict[str, np.ndarray], loss: float) -> Message:
    metrics = MetricRecord({"train-loss": loss, "num-examples": 10})
    content = RecordDict({"arrays": to_record(arrays), "metrics": metrics})
    return Message(content, reply_to=message)


def make_client_app(mode: str = "weights", seen_configs: list[dict[str, Any]] | None = None):
    """A ClientApp whose node behaviour follows ``node_config["role"]``.

    ``mode="weights"``: replies are global + update; ``"gradient"``: replies are the update.
    Every train config received is appended to ``seen_configs`` when given.
    """
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        role = context.node_config.get("role", "honest")
        node_id = context.node_id
        server_round = int(message.content["config"]["server-round"])
        if seen_configs is not None:
            seen_configs.append(dict(message.content["config"]))
        # persistent per-node state: count the rounds this node has trained
        trained = int(context.state["count"]["rounds"]) if "count" in context.state else 0
        context.state["count"] = MetricRecord({"rounds": trained + 1})

        global_arrays = from_record(message.content["arrays"])
        update = honest_update(node_id, server_round)
        if role == "huge":
            update = {k: np.full(v.shape, 1e6) for k, v in update.items()}
        elif role == "flip":
            update = {k: -100.0 * v for k, v in update.items()}
        elif role == "nan":
            update = {
                k: np.where(np.arange(v.size).reshape(v.shape) == 0, np.nan, v)
                for k, v in update.items()
            }
        elif role == "raise":
            raise RuntimeError("client crashed on purpose")
        elif role == "error":
            from flwr.app import Error

            return Message(Error(code=0, reason="refused on purpose"), reply_to=message)

        base = {k: np.zeros(s) for k, s in SHAPES.items()} if mode == "gradient" else global_arrays
        out: dict[str, np.ndarray] = {k: (base[k] + update[k]).astype(np.float32) for k in SHAPES}
        # integer buffer: a value the server must NOT aggregate (it keeps the global one)
        out[INT_KEY] = np.array(int(global_arrays[INT_KEY]) + 1000 + node_id, dtype=np.int64)
        if role == "missing-key":
            del out["layer.bias"]
        elif role == "extra-key":
            out["extra"] = np.zeros(2, dtype=np.float32)
        elif role == "wrong-shape":
            out["layer.weight"] = out["layer.weight"].reshape(3, 4)
        elif role == "wrong-dtype":
            out["layer.weight"] = out["layer.weight"].astype(np.float64)
        return _reply(message, out, loss=float(node_id))

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        if context.node_config.get("role") == "raise":
            raise RuntimeError("client crashed on purpose")
        metrics = MetricRecord({"eval-loss": float(context.node_id), "num-examples": 5})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    return app


def node_configs(roles: list[str]) -> list[dict[str, Any]]:
    return [{"role": role} for role in roles]


def train_config() -> ConfigRecord:
    return ConfigRecord({})
