"""The adversary's stacking of the round's replies: one copy, the same vectors as decoding each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from flwr_byz.clients import adversary
from flwr_byz.clients.records import flatten, record_to_state
from flwr_byz.inprocess import InProcessGrid


def _replies(arrays_per_node: list[dict[str, np.ndarray]]) -> list[Message]:
    InProcessGrid(lambda m, c: m, [{}] * len(arrays_per_node))  # sets Flower's TaskIdentity
    replies = []
    for node, arrays in enumerate(arrays_per_node, start=1):
        sent = Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.TRAIN)
        sent.metadata.__dict__["_message_id"] = f"stack-{node}"
        record = ArrayRecord({key: Array(value) for key, value in arrays.items()})
        replies.append(Message(RecordDict({"arrays": record}), reply_to=sent))
    return replies


def _model(rng: np.random.Generator, dtype: type) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((3, 4)).astype(dtype),
        "steps": np.array([7], dtype=np.int64),  # an integer buffer: not in the vector
        "b": rng.standard_normal(5).astype(dtype),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_stacked_replies_equal_each_decoded_and_flattened(dtype: type) -> None:
    rng = np.random.default_rng(0)
    replies = _replies([_model(rng, dtype) for _ in range(4)])
    expected = torch.stack(
        [flatten(record_to_state(r.content.array_records["arrays"])) for r in replies]
    )
    stacked = adversary._stack_replies(replies)
    assert stacked.dtype == torch.float32 and stacked.shape == (4, 17)
    assert torch.equal(stacked, expected)


def test_a_reply_of_another_shape_is_refused_naming_its_node() -> None:
    rng = np.random.default_rng(1)
    models = [_model(rng, np.float32) for _ in range(3)]
    models[2]["b"] = models[2]["b"][:4]
    with pytest.raises(ValueError, match="reply of node 3: array 'b' has shape"):
        adversary._stack_replies(_replies(models))
