"""A Flower ``Grid`` that wraps another and delegates everything; subclasses change only
``send_and_receive`` (the adversary's round ordering, the faulty channel)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


def resent(message: Message, records: dict[str, Any]) -> Message:
    """A new message to the same node, of the same type, TTL and group, with ``records`` as its
    content (wrappers that change what a node receives; the original is left untouched)."""
    meta = message.metadata
    return Message(
        RecordDict(records),
        meta.dst_node_id,
        meta.message_type,
        ttl=meta.ttl,
        group_id=meta.group_id,
    )


class GridWrapper(Grid):
    """Delegates the whole ``Grid`` API to ``grid``."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Run) -> None:
        """Set the run on the wrapped grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegated to the wrapped grid."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The wrapped grid's node ids."""
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegated unchanged (wrappers act in ``send_and_receive`` only)."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegated unchanged."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Delegated unchanged."""
        return self.grid.send_and_receive(messages, timeout=timeout)
