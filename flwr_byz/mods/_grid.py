"""``adversary_grid``: the server side of the mod's omniscient attacks, one line on a ServerApp.

No role query is sent (Flower refuses a message type with no registered handler before any mod
runs). The grid learns the Byzantine nodes from their replies instead: a Byzantine node whose
attack needs the honest vectors and got none answers with an error whose reason is
``NEEDS_HONEST``. Each train round the grid sends the messages of nodes not known to be Byzantine
first, then resends those of the Byzantine nodes (known or just revealed) with the honest replies
of the round stacked in the message (``RELAY_ARRAYS``, ``RELAY_CONFIG``; the mod strips them
before the user's code runs). From the second round on each node is sent one message per round.
Relaying models the adversary eavesdropping on the channel; honest nodes do nothing different.

A legacy ``ServerApp(server_fn=...)`` sends one message per call, from concurrent threads (one per
node): a Byzantine node's call then waits until the round's other train calls (same group id)
have returned (then 0.5 s of quiet; while no honest reply of the round has come, or fewer than
the previous lone call relayed, at least 10 s: a thread can start late on a busy machine) and
relays their honest replies. ``adversary_app`` wraps such a ServerApp's grid.

The grid also counts the replies the mod marked as attacked (``ATTACKED``, stripped here):
``attacked_rounds`` (round -> sorted sender ids) and ``attacked_node_ids``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from flwr_byz.flower_internals import set_reply_to
from flwr_byz.grid_wrapper import GridWrapper, resent

from ._mod import ATTACKED, NEEDS_HONEST, RELAY_ARRAYS, RELAY_CONFIG, _is_train, server_round
from ._records import LEGACY_RES, find_arrays, flat, to_arrays

SETTLE_SECONDS = 0.5  # a lone Byzantine call waits this long after the round's last train call
LONE_WAIT_SECONDS = 10.0  # ... and, while fewer honest replies came than last time, at least this
_KEPT_GROUPS = 2  # honest replies kept per group (round), for the lone calls of legacy apps


def _with_relay(message: Message, vectors: np.ndarray, honest: int, byzantine: int) -> Message:
    records = dict(message.content.items())
    records[RELAY_ARRAYS] = ArrayRecord({"vectors": Array(vectors)})
    records[RELAY_CONFIG] = ConfigRecord({"honest-count": honest, "byzantine-count": byzantine})
    return resent(message, records)


def _is_marker(reply: Message) -> bool:
    return reply.has_error() and str(reply.error.reason).startswith(NEEDS_HONEST)


def _row(reply: Message) -> np.ndarray | None:
    found = find_arrays(reply.content, LEGACY_RES)
    return None if found is None else flat(to_arrays(found[1])).numpy().astype(np.float32)


class RelayGrid(GridWrapper):
    """Wraps a ``Grid``; orders train rounds honest-first and relays honest replies (see module)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.byzantine_node_ids: set[int] = set()
        self.attacked_rounds: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self._inflight: dict[str, int] = {}  # group id -> honest train messages not yet answered
        self._entered: dict[str, float] = {}  # group id -> when its last train call began
        self._honest: dict[str, dict[int, np.ndarray]] = {}  # group id -> sender -> row
        self._lone_relayed = 1  # honest rows the last lone call relayed (expected again)

    @property
    def attacked_node_ids(self) -> list[int]:
        """The senders of every reply the mod marked as attacked, sorted."""
        with self._cond:
            return sorted({node for nodes in self.attacked_rounds.values() for node in nodes})

    def _note(self, replies: list[Message], keep: bool = False) -> None:
        """Strip and count the attack marks; ``keep``: store the honest train rows of the round
        (lone calls only: a batch call relays its own replies, and storing costs memory)."""
        for reply in replies:
            if not reply.has_content():
                continue
            mark = reply.content.config_records.get(ATTACKED)
            if mark is not None:
                del reply.content[ATTACKED]
                rnd = int(mark.get("round", 0) or 0) or server_round(reply)  # type: ignore[arg-type]
                with self._cond:
                    nodes = set(self.attacked_rounds.get(rnd, [])) | {reply.metadata.src_node_id}
                    self.attacked_rounds[rnd] = sorted(nodes)
            elif keep and _is_train(reply) and (row := _row(reply)) is not None:
                with self._cond:
                    group = str(reply.metadata.group_id)
                    self._honest.setdefault(group, {})[reply.metadata.src_node_id] = row
                    while len(self._honest) > _KEPT_GROUPS:
                        del self._honest[next(iter(self._honest))]

    def _wait_for_round(self, group: str, left) -> dict[int, np.ndarray]:
        """A lone Byzantine call (legacy apps): wait for the round's other train calls."""
        start = time.monotonic()
        with self._cond:
            while True:
                now = time.monotonic()
                settled = now - max(self._entered.get(group, 0.0), start)
                heard = len(self._honest.get(group, {})) >= self._lone_relayed
                heard = heard or now - start >= LONE_WAIT_SECONDS
                if self._inflight.get(group, 0) == 0 and settled >= SETTLE_SECONDS and heard:
                    break
                remaining = left()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(0.1 if remaining is None else min(0.1, remaining))
            rows = dict(self._honest.get(group, {}))
            self._lone_relayed = max(1, len(rows))
            return rows

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Non-Byzantine messages first, then the Byzantine train messages with the relay."""
        messages = list(messages)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        with self._cond:
            known = set(self.byzantine_node_ids)

        def byz(m: Message) -> bool:
            return _is_train(m) and m.metadata.dst_node_id in known

        first = [m for m in messages if not byz(m)]
        later = [m for m in messages if byz(m)]
        groups = [str(m.metadata.group_id) for m in first if _is_train(m)]
        with self._cond:
            for group in groups:
                self._inflight[group] = self._inflight.get(group, 0) + 1
                self._entered[group] = time.monotonic()
            for m in later:
                self._entered.setdefault(str(m.metadata.group_id), 0.0)
        try:
            replies = list(self.grid.send_and_receive(first, timeout=left())) if first else []
        finally:
            with self._cond:
                for group in groups:
                    self._inflight[group] -= 1
                self._cond.notify_all()
        revealed = {r.metadata.src_node_id for r in replies if _is_marker(r)}
        if revealed:
            with self._cond:
                self.byzantine_node_ids |= revealed
            later += [m for m in first if _is_train(m) and m.metadata.dst_node_id in revealed]
            replies = [r for r in replies if not _is_marker(r)]
        self._note(replies, keep=len(groups) == 1)
        if not later:
            return replies
        honest = {
            r.metadata.src_node_id: row
            for r in replies
            if _is_train(r) and not r.has_error() and (row := _row(r)) is not None
        }
        if not honest:  # one message per call (legacy ServerApp): the round's other calls
            honest = self._wait_for_round(str(later[0].metadata.group_id), left)
        rows = [honest[node] for node in sorted(honest)]
        sizes = {row.size for row in rows}
        if len(sizes) > 1:
            size = max(sizes, key=[row.size for row in rows].count)  # the majority's layout
            rows = [row for row in rows if row.size == size]
        vectors = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
        relayed = [_with_relay(m, vectors, len(rows), len(later)) for m in later]
        attacked = list(self.grid.send_and_receive(relayed, timeout=left()))
        # a revealed node's original message was pushed (and answered by the marker): its
        # attacked reply answers the copy; make it answer the original, as the strategy expects
        pushed = {m.metadata.dst_node_id: m.metadata.message_id for m in later}
        for reply in attacked:
            if original := pushed.get(reply.metadata.src_node_id):
                set_reply_to(reply.metadata, original)
        self._note(attacked)
        replies.extend(attacked)
        return replies


def adversary_grid(grid: Grid) -> RelayGrid:
    """``grid`` wrapped for ``byzantine_mod``'s omniscient attacks: ``grid = adversary_grid(grid)``.

    Own-vector and data attacks need no wrapping; wrapping costs them nothing."""
    return grid if isinstance(grid, RelayGrid) else RelayGrid(grid)


class _AdversaryServerApp(ServerApp):
    """A ServerApp whose grid is ``adversary_grid``-wrapped (see ``adversary_app``)."""

    relay_grid: RelayGrid | None = None

    def __call__(self, grid: Grid, context: Context) -> None:
        self.relay_grid = adversary_grid(grid)
        super().__call__(self.relay_grid, context)


def adversary_app(app: ServerApp) -> ServerApp:
    """``app`` running on ``adversary_grid(grid)``: the one line of a legacy ServerApp,
    ``app = adversary_app(ServerApp(server_fn=server_fn))`` (works for ``@app.main()`` too).
    The wrapped grid is ``app.relay_grid`` once the app runs."""
    if not isinstance(app, _AdversaryServerApp):
        cls = type(app)
        app.__class__ = type(f"Adversary{cls.__name__}", (_AdversaryServerApp, cls), {})
    return app
