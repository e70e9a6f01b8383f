"""``adversary_grid``: the server side of the mod's omniscient attacks, one line on a ServerApp.

No role query is sent (Flower refuses a message type with no registered handler before any mod
runs). The grid learns the Byzantine nodes from their replies instead: a Byzantine node whose
attack needs the honest vectors and got none answers with an error whose reason is
``NEEDS_HONEST``. Each train round the grid sends the messages of nodes not known to be Byzantine
first, then resends those of the Byzantine nodes (known or just revealed) with the honest replies
of the round stacked in the message (``RELAY_ARRAYS``, ``RELAY_CONFIG``; the mod strips them
before the user's code runs). From the second round on each node is sent one message per round.
Relaying models the adversary eavesdropping on the channel; honest nodes do nothing different.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from flwr_byz.grid_wrapper import GridWrapper

from ._mod import NEEDS_HONEST, RELAY_ARRAYS, RELAY_CONFIG, _is_train
from ._records import LEGACY_RES, find_arrays, flat, to_arrays


def _with_relay(message: Message, vectors: np.ndarray, honest: int, byzantine: int) -> Message:
    records = dict(message.content.items())
    records[RELAY_ARRAYS] = ArrayRecord({"vectors": Array(vectors)})
    records[RELAY_CONFIG] = ConfigRecord({"honest-count": honest, "byzantine-count": byzantine})
    meta = message.metadata
    return Message(
        RecordDict(records),
        meta.dst_node_id,
        meta.message_type,
        ttl=meta.ttl,
        group_id=meta.group_id,
    )


def _is_marker(reply: Message) -> bool:
    return reply.has_error() and str(reply.error.reason).startswith(NEEDS_HONEST)


class RelayGrid(GridWrapper):
    """Wraps a ``Grid``; orders train rounds honest-first and relays honest replies (see module)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.byzantine_node_ids: set[int] = set()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Non-Byzantine messages first, then the Byzantine train messages with the relay."""
        messages = list(messages)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        def byz(m: Message) -> bool:
            return _is_train(m) and m.metadata.dst_node_id in self.byzantine_node_ids

        first = [m for m in messages if not byz(m)]
        later = [m for m in messages if byz(m)]
        replies = list(self.grid.send_and_receive(first, timeout=left())) if first else []
        revealed = {r.metadata.src_node_id for r in replies if _is_marker(r)}
        if revealed:
            self.byzantine_node_ids |= revealed
            later += [m for m in first if _is_train(m) and m.metadata.dst_node_id in revealed]
            replies = [r for r in replies if not _is_marker(r)]
        if not later:
            return replies
        honest = sorted(
            (r for r in replies if _is_train(r) and not r.has_error()),
            key=lambda r: r.metadata.src_node_id,
        )
        rows = []
        for reply in honest:
            found = find_arrays(reply.content, LEGACY_RES)
            if found is not None:
                rows.append(flat(to_arrays(found[1])).numpy().astype(np.float32))
        sizes = {row.size for row in rows}
        if len(sizes) > 1:
            size = max(sizes, key=[row.size for row in rows].count)  # the majority's layout
            rows = [row for row in rows if row.size == size]
        vectors = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
        relayed = [_with_relay(m, vectors, len(rows), len(later)) for m in later]
        replies.extend(self.grid.send_and_receive(relayed, timeout=left()))
        return replies


def adversary_grid(grid: Grid) -> RelayGrid:
    """``grid`` wrapped for ``byzantine_mod``'s omniscient attacks: ``grid = adversary_grid(grid)``.

    Own-vector and data attacks need no wrapping; wrapping costs them nothing."""
    return grid if isinstance(grid, RelayGrid) else RelayGrid(grid)
