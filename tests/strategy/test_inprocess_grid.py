"""InProcessGrid: persistent Contexts, node configs, error replies, isolation between nodes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from flwr_byz.inprocess import InProcessGrid


def _counting_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        rounds = int(context.state["c"]["rounds"]) + 1 if "c" in context.state else 1
        context.state["c"] = MetricRecord({"rounds": rounds})
        if context.node_config.get("crash"):
            raise ValueError("boom")
        # an evil node edits its message in place: others must not see it
        message.content["arrays"]["w"] = Array(np.full(2, -1.0, np.float32))
        message.content["config"]["poison"] = 1
        reply = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.full(2, float(context.node_id), np.float32))}),
                "metrics": MetricRecord(
                    {
                        "rounds": rounds,
                        "partition": int(context.node_config["partition-id"]),
                        "lr": float(context.run_config["lr"]),
                    }
                ),
            }
        )
        return Message(reply, reply_to=message)

    return app


def _messages(grid: InProcessGrid, content: RecordDict) -> list[Message]:
    return [Message(content, node, MessageType.TRAIN) for node in grid.get_node_ids()]


def test_is_a_grid_with_default_and_custom_node_ids() -> None:
    grid = InProcessGrid(_counting_app(), [{}, {}, {}])
    assert isinstance(grid, Grid)
    assert grid.get_node_ids() == [1, 2, 3]
    assert [n.node_id for n in grid.get_nodes()] == [1, 2, 3]
    custom = InProcessGrid(_counting_app(), [{}, {}], node_ids=[10, 20])
    assert custom.get_node_ids() == [10, 20]
    with pytest.raises(ValueError, match="distinct"):
        InProcessGrid(_counting_app(), [{}, {}], node_ids=[5, 5])
    with pytest.raises(ValueError, match="must match"):
        InProcessGrid(_counting_app(), [{}, {}], node_ids=[5])


def test_contexts_persist_across_rounds_and_carry_the_configs() -> None:
    grid = InProcessGrid(_counting_app(), [{"k": "a"}, {"k": "b"}], run_config={"lr": 0.5})
    w = np.zeros(2, np.float32)
    for expected_round in (1, 2, 3):
        content = RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "config": ConfigRecord({})})
        replies = grid.send_and_receive(_messages(grid, content))
        assert [r.metadata.src_node_id for r in replies] == [1, 2]
        assert all(r.content["metrics"]["rounds"] == expected_round for r in replies)
    assert [r.content["metrics"]["partition"] for r in replies] == [0, 1]
    assert all(r.content["metrics"]["lr"] == 0.5 for r in replies)
    assert grid.contexts[2].node_config == {"k": "b", "partition-id": 1, "num-partitions": 2}


def test_client_edits_to_its_message_stay_private() -> None:
    grid = InProcessGrid(_counting_app(), [{}, {}, {}], run_config={"lr": 0.1})
    w = np.arange(2, dtype=np.float32)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "config": ConfigRecord({})})
    grid.send_and_receive(_messages(grid, content))
    np.testing.assert_array_equal(content["arrays"]["w"].numpy(), w)
    assert "poison" not in content["config"]


def test_client_exception_becomes_an_error_reply_and_others_still_answer() -> None:
    grid = InProcessGrid(_counting_app(), [{}, {"crash": True}, {}], run_config={"lr": 0.1})
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
    content["config"] = ConfigRecord({})
    replies = grid.send_and_receive(_messages(grid, content))
    assert [r.has_error() for r in replies] == [False, True, False]
    error = replies[1].error
    assert error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and "boom" in error.reason
    assert replies[1].metadata.src_node_id == 2
    # as in Flower, a raising app leaves the node's state as it was before the call
    assert "c" not in grid.contexts[2].state
    assert grid.contexts[1].state["c"]["rounds"] == 1


def test_forged_or_non_message_replies_become_errors() -> None:
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> object:
        if context.node_id == 1:
            return "not a message"
        other = Message(RecordDict(), 99, MessageType.TRAIN)  # not a reply to `message`
        return other

    grid = InProcessGrid(app, [{}, {}])
    replies = grid.send_and_receive(_messages(grid, RecordDict({"config": ConfigRecord({})})))
    assert all(r.has_error() for r in replies)
    assert "not a Message" in replies[0].error.reason
    assert "does not answer this message" in replies[1].error.reason


def test_push_then_pull_returns_each_reply_once() -> None:
    grid = InProcessGrid(_counting_app(), [{}, {}], run_config={"lr": 0.1})
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
    content["config"] = ConfigRecord({})
    ids = grid.push_messages(_messages(grid, content))
    assert len(set(ids)) == 2
    replies = grid.pull_messages(ids)
    assert [r.metadata.reply_to_message_id for r in replies] == ids
    assert grid.pull_messages(ids) == []


def test_message_to_unknown_node_gets_an_error_reply() -> None:
    grid = InProcessGrid(_counting_app(), [{}])
    replies = grid.send_and_receive([Message(RecordDict(), 42, MessageType.TRAIN)])
    assert replies[0].has_error() and "unknown destination node 42" in replies[0].error.reason


def test_a_raising_node_logs_one_error_line_and_its_traceback_only_at_debug() -> None:
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("flwr")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        grid = InProcessGrid(_counting_app(), [{"crash": True}, {}], run_config={"lr": 0.1})
        content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2, np.float32))})})
        content["config"] = ConfigRecord({})
        grid.send_and_receive(_messages(grid, content))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "node 1" in errors[0] and "boom" in errors[0] and "test_inprocess_grid.py" in errors[0]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any("Traceback" in message for message in debug)
