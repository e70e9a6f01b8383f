"""Server-side helpers for the adversary's round ordering and for learning the nodes' roles.

Flower's simulation engine runs only a few ClientApps at once (2 on a 2-core machine). If a
Byzantine node that waits for the honest vectors of the round (or for its fellow colluders) ran
before them, it would hold a worker while the nodes it waits for cannot run: a deadlock.
``AdversaryGrid`` prevents that by ordering each training round: the honest nodes first (they
publish what the adversary eavesdrops), then, for non-omniscient collusion, a "collect" phase in
which every colluder publishes its own honest vector (replies discarded), then the Byzantine
nodes' real messages, which find everything they wait for already published.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from .grid_wrapper import GridWrapper
from .keys import ADDRESS_KEY, HONEST_COUNT_KEY, PHASE_KEY, ROLE_KEY

__all__ = ["NEEDS", "AdversaryGrid", "discover_roles", "needs_for_run_config"]

NEEDS = ("omniscient", "colluders", "own", "none")


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == MessageType.TRAIN


def with_config(message: Message, extra: dict[str, Any]) -> Message:
    """A copy of ``message`` whose "config" ConfigRecord also holds ``extra`` (the original, often
    shared by all messages of a round, is left untouched)."""
    content = message.content
    records: dict[str, Any] = dict(content.items())
    config = dict(records["config"].items()) if "config" in records else {}
    records["config"] = ConfigRecord({**config, **extra})
    meta = message.metadata
    return Message(
        RecordDict(records),
        meta.dst_node_id,
        meta.message_type,
        ttl=meta.ttl,
        group_id=meta.group_id,
    )


class AdversaryGrid(GridWrapper):
    """Wraps a Flower ``Grid``; orders each train round so that colluders never deadlock.

    ``byzantine_node_ids``: the nodes running the attack (from ``discover_roles``); ``needs``:
    "omniscient" (honest first, then Byzantine), "colluders" (honest, collect, Byzantine) or
    "own"/"none" (pass through); ``needs_for_run_config`` gives the value for a run.
    ``coordinator_address``: put into every train message's config (key
    ``coordinator-address``) so that clients find a coordinator started by the ServerApp.
    Byzantine messages also get ``byz-honest-count``: the honest replies received this round.
    """

    def __init__(
        self,
        grid: Grid,
        byzantine_node_ids: Iterable[int],
        needs: str = "omniscient",
        coordinator_address: str | None = None,
    ) -> None:
        if needs not in NEEDS:
            raise ValueError(f"AdversaryGrid: needs must be one of {NEEDS}, got {needs!r}")
        self.grid = grid
        self.byzantine_node_ids = frozenset(int(node) for node in byzantine_node_ids)
        self.needs = needs
        self.coordinator_address = coordinator_address or ""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Honest (and non-train) messages first, then the collect phase, then the Byzantine
        train messages; all replies (except the collect phase's) are returned."""
        messages = list(messages)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if self.coordinator_address:
            address = {ADDRESS_KEY: self.coordinator_address}
            messages = [with_config(m, address) if _is_train(m) else m for m in messages]
        byzantine = [
            m
            for m in messages
            if _is_train(m) and m.metadata.dst_node_id in self.byzantine_node_ids
        ]
        if self.needs in ("own", "none") or not byzantine:
            return list(self.grid.send_and_receive(messages, timeout=timeout))
        first = [m for m in messages if not any(m is b for b in byzantine)]
        replies = list(self.grid.send_and_receive(first, timeout=left())) if first else []
        honest_ok = sum(
            1
            for r in replies
            if _is_train(r)
            and not r.has_error()
            and r.metadata.src_node_id not in self.byzantine_node_ids
        )
        extra = {HONEST_COUNT_KEY: honest_ok}
        if self.needs == "colluders":
            collect = [with_config(m, {**extra, PHASE_KEY: "collect"}) for m in byzantine]
            list(self.grid.send_and_receive(collect, timeout=left()))
        real = [with_config(m, {**extra, PHASE_KEY: "real"}) for m in byzantine]
        replies.extend(self.grid.send_and_receive(real, timeout=left()))
        return replies


def needs_for_run_config(run_config: Mapping[str, Any], num_partitions: int) -> str:
    """What the run's adversary must know each round ("omniscient", "colluders", "own" or
    "none"), from the run config alone (for the ServerApp's ``AdversaryGrid``)."""
    from .app import adversary_needs  # the ClientApp module: imported only when asked
    from .config import ClientConfig

    node = {"partition-id": 0, "num-partitions": int(num_partitions)}
    return adversary_needs(ClientConfig.from_configs(run_config, node))


def discover_roles(
    grid: Grid, timeout: float | None = 120.0, min_nodes: int = 1
) -> dict[int, tuple[int, bool]]:
    """Ask every node (a "query" message answered by ``clients.app``'s query handler) for its
    partition id and whether it is Byzantine: ``{node_id: (partition_id, is_byzantine)}``.

    Waits (at most ``timeout`` s) until the grid lists ``min_nodes`` nodes: in Flower's
    simulation the ServerApp starts before the SuperNodes have registered."""
    deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
    node_ids = sorted(int(node) for node in grid.get_node_ids())
    while len(node_ids) < max(1, min_nodes):
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"discover_roles: only {len(node_ids)} nodes connected after {timeout} s, "
                f"expected at least {max(1, min_nodes)}"
            )
        time.sleep(0.2)
        node_ids = sorted(int(node) for node in grid.get_node_ids())
    messages = [
        Message(RecordDict({"config": ConfigRecord({"ask": ROLE_KEY})}), node, MessageType.QUERY)
        for node in node_ids
    ]
    roles: dict[int, tuple[int, bool]] = {}
    failures: list[str] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            failures.append(f"node {node}: {reply.error.reason}")
            continue
        role = reply.content.config_records[ROLE_KEY]
        roles[node] = (int(role["partition-id"]), bool(role["is-byzantine"]))
    missing = sorted(set(node_ids) - set(roles))
    if failures or missing:
        raise RuntimeError(
            f"discover_roles: no role from nodes {missing} of {node_ids}"
            + (f"; errors: {'; '.join(failures)}" if failures else "")
        )
    return roles
