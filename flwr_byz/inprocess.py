"""An in-process Flower ``Grid``: calls the ClientApp directly, sequentially, deterministically.

Used by tests and by the simulations' ``inprocess`` engine: no Ray, no SuperLink, no serialization.
Each node has one persistent ``Context`` (``context.state`` survives across rounds), its own
``node_config`` and a copy of the shared ``run_config``, like Flower's simulation engine gives. A
ClientApp exception becomes an error reply (``ErrorCode.CLIENT_APP_RAISED_EXCEPTION``) and leaves
the node's Context as it was before the call, as in Flower.

Messages built outside a Flower run need ``flwr.supercore.task_identity.TaskIdentity`` (the
``Message`` constructor reads the run id, source node id and task id from it): the grid sets it when
it is unset, as Flower's legacy compat layer does.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping, Sequence
from copy import copy
from itertools import count
from logging import DEBUG, ERROR
from typing import Any

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from flwr_byz.flower_internals import (
    ensure_task_identity,
    fill_record,
    new_array,
    set_message_id,
    set_record_items,
)

__all__ = ["InProcessGrid"]

#: Keys Flower's simulation engine puts into every node_config (filled in when absent).
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"


def _copy_array(array: Array) -> Array:
    """A new ``Array`` with the same fields, sharing the (immutable) ``bytes``.

    Same result as ``Array(dtype=..., shape=..., stype=..., data=...)`` without its argument
    dispatch (the copy of a message runs once per node and array every round)."""
    if type(array) is not Array:
        return Array(
            dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data
        )
    return new_array(array.dtype, tuple(array.shape), array.stype, array.data)


def _copy_recorddict(content: RecordDict) -> RecordDict:
    """A copy of the record structure that shares the (immutable) array bytes.

    Strategies send one ``RecordDict`` object to every node; a ClientApp that edits its message in
    place must not change what the other nodes (or the server) see. ``Array`` objects hold
    immutable ``bytes``, so sharing them costs nothing and is safe.
    """
    records: dict[str, Any] = {}
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = ArrayRecord()
            # the entries come from a valid ArrayRecord (str keys, Array values): skip the checks
            fill_record(arrays, ((name, _copy_array(array)) for name, array in record.items()))
            records[key] = arrays
        elif isinstance(record, ConfigRecord | MetricRecord):
            # ``copy()`` skips the per-item type checks (the items come from a valid record);
            # lists are copied so that an edit on one node stays there
            copied = record.copy()
            set_record_items(
                copied, {k: list(v) if isinstance(v, list) else v for k, v in record.items()}
            )
            records[key] = copied
        else:  # pragma: no cover - RecordDict holds only the three record types
            records[key] = record
    return RecordDict(records)


class InProcessGrid(Grid):
    """A ``Grid`` that runs ``client_app`` in this process, one node after the other.

    Args:
        client_app: a ``flwr.clientapp.ClientApp`` (anything callable as ``app(message, context)``).
        node_configs: one dict per node (its ``context.node_config``); ``partition-id`` (index)
            and ``num-partitions`` are added when absent, as Flower's simulation does.
        run_config: the run config every node sees (each Context gets its own copy).
        node_ids: the node ids, ``1..n`` by default; must be distinct ints.
        run_id: the run id put in the Contexts and, when unset, in ``TaskIdentity``.
    """

    def __init__(
        self,
        client_app: Any,
        node_configs: Sequence[Mapping[str, Any]],
        run_config: Mapping[str, Any] | None = None,
        node_ids: Sequence[int] | None = None,
        run_id: int = 1,
    ) -> None:
        if not callable(client_app):
            raise TypeError(f"client_app must be a ClientApp, got {type(client_app).__name__}")
        num_nodes = len(node_configs)
        if node_ids is None:
            node_ids = list(range(1, num_nodes + 1))
        node_ids = [int(i) for i in node_ids]
        if len(node_ids) != num_nodes:
            raise ValueError(
                f"got {len(node_ids)} node_ids for {num_nodes} node_configs; they must match"
            )
        if len(set(node_ids)) != num_nodes:
            raise ValueError(f"node_ids must be distinct, got {node_ids}")
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        shared = dict(run_config or {})
        self.contexts: dict[int, Context] = {}
        for index, (node_id, node_config) in enumerate(zip(node_ids, node_configs, strict=True)):
            config = dict(node_config)
            config.setdefault(PARTITION_ID_KEY, index)
            config.setdefault(NUM_PARTITIONS_KEY, num_nodes)
            self.contexts[node_id] = Context(
                run_id=run_id,
                node_id=node_id,
                node_config=config,
                state=RecordDict(),
                run_config=dict(shared),
            )
        self._node_ids = list(node_ids)
        self._replies: dict[str, Message] = {}
        self._message_counter = count(1)
        self._ensure_task_identity()

    def _ensure_task_identity(self) -> None:
        """Set ``TaskIdentity`` (needed by ``Message(...)``) when no Flower runtime has set it."""
        ensure_task_identity(self._run.run_id)

    # ------------------------------------------------------------ Grid API
    def set_run(self, run: Run | int) -> None:
        """Set the run (a ``Run`` or a run id)."""
        self._run = Run.create_empty(run) if isinstance(run, int) else run

    @property
    def run(self) -> Run:
        """Run information."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A new instruction message (deprecated in Flower; kept for the Grid interface)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """The node ids, in construction order."""
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run the ClientApp on each message now, in order; keep the replies for pulling."""
        message_ids: list[str] = []
        for message in messages:
            message_id = f"inprocess-{next(self._message_counter)}"
            set_message_id(message.metadata, message_id)
            self._replies[message_id] = self._deliver(message)
            message_ids.append(message_id)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to these message ids (each returned once)."""
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Run every message through its node's ClientApp and return the replies, in order.

        ``timeout`` is accepted for the interface; calls are synchronous and always complete.
        """
        return self.pull_messages(self.push_messages(messages))

    # ------------------------------------------------------------ delivery
    def _deliver(self, message: Message) -> Message:
        """Call the ClientApp on one message; an exception or bad return becomes an error reply."""
        node_id = message.metadata.dst_node_id
        context = self.contexts.get(node_id)
        if context is None:
            reason = f"unknown destination node {node_id}; nodes are {self._node_ids}"
            return self._error_reply(message, ErrorCode.UNKNOWN, reason)
        # ``metadata=`` is Flower's own (runtime-supported) way to rebuild a message with given
        # metadata, left out of Message's typed overloads; Flower's make_message wraps the same
        # call with the same ignore, but has moved between the flwr versions we support.
        incoming = (
            Message(  # type: ignore[call-overload]
                content=_copy_recorddict(message.content), metadata=copy(message.metadata)
            )
            if message.has_content()
            else message
        )
        saved_state = _copy_recorddict(context.state)  # cheap: array bytes are shared
        try:
            reply = self.client_app(incoming, context)
        except Exception as err:  # Flower turns ClientApp exceptions into replies
            context.state = saved_state  # Flower keeps the pre-call Context when the app raises
            # one line per failing node (where it raised); the traceback only at DEBUG level
            frame = traceback.extract_tb(err.__traceback__)[-1]
            where = f"{frame.filename}:{frame.lineno}"
            log(ERROR, "ClientApp raised on node %s: %r (at %s)", node_id, err, where)
            log(DEBUG, traceback.format_exc())
            reason = f"{type(err)}:<'{err}'>"
            return self._error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
        if not isinstance(reply, Message):
            reason = f"ClientApp returned a {type(reply).__name__}, not a Message"
            return self._error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
        meta = reply.metadata
        if meta.reply_to_message_id != message.metadata.message_id or meta.src_node_id != node_id:
            reason = (
                f"ClientApp reply does not answer this message (reply_to "
                f"{meta.reply_to_message_id!r}, src_node_id {meta.src_node_id}); build it with "
                "Message(content, reply_to=message)"
            )
            return self._error_reply(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
        set_message_id(meta, f"inprocess-reply-{next(self._message_counter)}")
        return reply

    @staticmethod
    def _error_reply(message: Message, code: int, reason: str) -> Message:
        return Message(Error(code=code, reason=reason), reply_to=message)
