"""Server-side helpers for the adversary's round ordering and for learning the nodes' roles.

Flower's simulation engine runs only a few ClientApps at once (2 on a 2-core machine). If a
Byzantine node that waits for the honest vectors of the round (or for its fellow colluders) ran
before them, it would hold a worker while the nodes it waits for cannot run: a deadlock.
``AdversaryGrid`` prevents that by ordering each training round: the honest nodes first (they
publish what the adversary eavesdrops), then, for non-omniscient collusion, a "collect" phase in
which every colluder publishes its own honest vector (replies discarded), then the Byzantine
nodes' real messages, which find everything they wait for already published.

Attacks whose vector is the same for every colluder and a function of the vectors their threat
model lets them know (``MaliciousClient.same_for_all``: omniscient ALIE, IPM, l_p, omniscient
negative from the round's honest vectors; non-omniscient ALIE from the colluders' own) are
computed once per round here, when ``run_config`` is given. The adversary reads the replies it
already eavesdrops on -- the honest replies (omniscient) or the collect phase's replies, which
then carry each colluder's own honest vector (colluders) -- with no coordinator round trip
(messages carry ``byz-eavesdrop = False`` so the nodes skip publishing), and hands the vector
to every attacker in its train message (ArrayRecord ``byz-attack``), which the attacker sends
as it is without training again. What each attack may know is unchanged: a colluding attack's
vector is computed from the colluders' replies only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from torch import Tensor

from flwr_byz._values import as_int
from flwr_byz.codec import array_to_numpy
from flwr_byz.grid_wrapper import GridWrapper, resent
from flwr_byz.layout import ModelLayout

from .keys import ADDRESS_KEY, HONEST_COUNT_KEY, PHASE_KEY, ROLE_KEY
from .malicious import (
    EAVESDROP_KEY,
    SHARED_ERROR_KEY,
    SHARED_VECTOR_ARRAY,
    SHARED_VECTOR_KEY,
    MaliciousClient,
)

__all__ = ["NEEDS", "AdversaryGrid", "discover_roles", "needs_for_run_config"]

NEEDS = ("omniscient", "colluders", "own", "none")


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == MessageType.TRAIN


def with_config(
    message: Message, extra: dict[str, Any], records_extra: Mapping[str, Any] | None = None
) -> Message:
    """A copy of ``message`` whose "config" ConfigRecord also holds ``extra`` (and whose content
    also holds ``records_extra``); the original, often shared by a round's messages, is left
    untouched."""
    content = message.content
    records: dict[str, Any] = dict(content.items())
    config = dict(records["config"].items()) if "config" in records else {}
    records["config"] = ConfigRecord({**config, **extra})
    records.update(records_extra or {})
    return resent(message, records)


class AdversaryGrid(GridWrapper):
    """Wraps a Flower ``Grid``; orders each train round so that colluders never deadlock.

    ``byzantine_node_ids``: the nodes running the attack (from ``discover_roles``); ``needs``:
    "omniscient" (honest first, then Byzantine), "colluders" (honest, collect, Byzantine) or
    "own"/"none" (pass through); ``needs_for_run_config`` gives the value for a run.
    ``coordinator_address``: put into every train message's config (key
    ``coordinator-address``) so that clients find a coordinator started by the ServerApp.
    Byzantine messages also get ``byz-honest-count``: the honest replies received this round.

    ``run_config`` (with ``partition_of``, ``{node_id: partition_id}`` of every node, e.g. from
    ``discover_roles``): when the run's attack is ``same_for_all``, compute its vector once per
    round from the honest replies (ordered by partition id, as the coordinator orders them) and
    send it to the attackers instead of letting each fetch and recompute it.
    """

    def __init__(
        self,
        grid: Grid,
        byzantine_node_ids: Iterable[int],
        needs: str = "omniscient",
        coordinator_address: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        partition_of: Mapping[int, int] | None = None,
    ) -> None:
        if needs not in NEEDS:
            raise ValueError(f"AdversaryGrid: needs must be one of {NEEDS}, got {needs!r}")
        self.grid = grid
        self.byzantine_node_ids = frozenset(int(node) for node in byzantine_node_ids)
        self.needs = needs
        self.coordinator_address = coordinator_address or ""
        self.partition_of = {int(k): int(v) for k, v in (partition_of or {}).items()}
        self.attack: MaliciousClient | None = None
        self.num_attackers = 0
        if run_config is not None and needs in ("omniscient", "colluders"):
            self.attack, self.num_attackers = _shared_attack(run_config, self.partition_of)

    @property
    def computes_vector(self) -> bool:
        """Whether this grid computes the attack vector once per round (see the class doc)."""
        return self.attack is not None

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Honest (and non-train) messages first, then the collect phase, then the Byzantine
        train messages; all replies (except the collect phase's) are returned."""
        messages = list(messages)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        byzantine_ids = self.byzantine_node_ids
        if self.coordinator_address:
            address = {ADDRESS_KEY: self.coordinator_address}
            messages = [with_config(m, address) if _is_train(m) else m for m in messages]
        byzantine = [
            m for m in messages if _is_train(m) and m.metadata.dst_node_id in byzantine_ids
        ]
        if self.needs in ("own", "none") or not byzantine:
            return list(self.grid.send_and_receive(messages, timeout=timeout))
        quiet = {EAVESDROP_KEY: False} if self.attack is not None else {}
        if quiet and self.needs == "omniscient":  # the grid reads the honest replies
            messages = [
                with_config(m, quiet) if _is_train(m) and not any(m is b for b in byzantine) else m
                for m in messages
            ]
        first = [m for m in messages if not any(m is b for b in byzantine)]
        replies = list(self.grid.send_and_receive(first, timeout=left())) if first else []
        honest_ok = len(self._usable(replies, byzantine=False))
        extra: dict[str, Any] = {HONEST_COUNT_KEY: honest_ok, PHASE_KEY: "real"}
        known = replies
        if self.needs == "colluders":  # with ``quiet`` the colluders reply their own vectors
            collect = [with_config(m, {**extra, **quiet, PHASE_KEY: "collect"}) for m in byzantine]
            known = list(self.grid.send_and_receive(collect, timeout=left()))
        records: dict[str, Any] = {}
        if self.attack is not None:
            try:
                vector = self._known_vector(known, honest_ok)
                array = Array(np.ascontiguousarray(vector.numpy()))
                records[SHARED_VECTOR_KEY] = ArrayRecord({SHARED_VECTOR_ARRAY: array})
            except (ValueError, RuntimeError) as error:
                extra[SHARED_ERROR_KEY] = f"{type(error).__name__}: {error}"
        real = [with_config(m, extra, records) for m in byzantine]
        replies.extend(self.grid.send_and_receive(real, timeout=left()))
        return replies

    def _usable(self, replies: Iterable[Message], byzantine: bool) -> list[Message]:
        """The train replies without error from honest (or, ``byzantine``, Byzantine) nodes."""
        return [
            r
            for r in replies
            if _is_train(r)
            and not r.has_error()
            and (r.metadata.src_node_id in self.byzantine_node_ids) == byzantine
        ]

    def _stacked(self, rows: list[Message], what: str) -> Tensor:
        """The ``(k, d)`` float32 vectors of ``rows`` ordered by partition id (then node id):
        what the coordinator would have served."""
        if not rows:
            raise ValueError(f"no {what} reply in this round")

        def order(reply: Message) -> tuple[int, int]:
            node = reply.metadata.src_node_id
            return self.partition_of.get(node, node), node

        return _stack_replies(sorted(rows, key=order))

    def honest_vectors(self, replies: Iterable[Message]) -> Tensor:
        """The ``(k, d)`` float32 vectors of the honest train replies without error, ordered by
        partition id (then node id): what the coordinator would have served."""
        return self._stacked(self._usable(replies, byzantine=False), "honest")

    def colluder_vectors(self, replies: Iterable[Message]) -> Tensor:
        """The colluders' own honest vectors from the collect phase's replies, ordered by
        partition id: what the coordinator would have served under ``colluder``."""
        return self._stacked(self._usable(replies, byzantine=True), "colluder")

    def round_vector(self, replies: Iterable[Message]) -> Tensor:
        """The round's attack vector (float32 ``(d,)``), computed once from the honest replies."""
        return self._known_vector(replies, len(self._usable(replies, byzantine=False)))

    def _known_vector(self, replies: Iterable[Message], honest_count: int) -> Tensor:
        """The round's attack vector from what the threat model lets the attackers know: the
        honest replies (omniscient) or the collect phase's replies (colluders); n counts the
        ``honest_count`` honest replies and the attackers, as each attacker counted it."""
        if self.attack is None:
            raise ValueError("AdversaryGrid: the run's attack is not computed by the grid")
        replies = list(replies)
        if self.needs == "colluders":
            known = self.colluder_vectors(replies)
        else:
            known = self.honest_vectors(replies)
        n = honest_count + self.num_attackers
        return self.attack.from_known(known, n, self.num_attackers).to(torch.float32).cpu()


def _reply_arrays(reply: Message) -> dict[str, np.ndarray]:
    """The reply's model arrays as read-only numpy views of its bytes (no copy)."""
    records = reply.content.array_records
    arrays = records["arrays"] if "arrays" in records else next(iter(records.values()))
    return {key: array_to_numpy(array) for key, array in arrays.items()}


def _stack_replies(replies: list[Message]) -> Tensor:
    """The ``(k, d)`` float32 flat vectors of ``replies`` (``flwr_byz.layout``'s vector, the
    first reply's layout), written once into the stacked tensor; a reply whose arrays do not
    match the first's raises ValueError naming the node and why."""
    models = [_reply_arrays(reply) for reply in replies]
    layout = ModelLayout(models[0])
    for reply, arrays in zip(replies, models, strict=True):
        if (problem := layout.check(arrays)) is not None:
            raise ValueError(f"reply of node {reply.metadata.src_node_id}: {problem}")
    return layout.stack(models).to(torch.float32)


def _shared_attack(
    run_config: Mapping[str, Any], partition_of: Mapping[int, int]
) -> tuple[MaliciousClient | None, int]:
    """The run's malicious client when its vector is the same for every colluder (the threat
    model of ``flwr_byz.attacks`` says so), and the attackers' count. Such a vector depends on
    the known vectors, n and f only, so the role is built for node 0's view of the run."""
    from flwr_byz import attacks
    from flwr_byz.schema import ClientConfig

    from .malicious import make_malicious_client

    if not partition_of:
        raise ValueError("AdversaryGrid: run_config needs partition_of (from discover_roles)")
    node = {"partition-id": 0, "num-partitions": len(partition_of)}
    cfg = ClientConfig.from_configs(run_config, node)
    attackers = len(cfg.byzantine_partition_ids)
    if not attacks.same_for_all(cfg.attack, cfg.attack_options):
        return None, attackers
    return make_malicious_client(cfg), attackers


def needs_for_run_config(run_config: Mapping[str, Any], num_partitions: int) -> str:
    """What the run's adversary must know each round ("omniscient", "colluders", "own", "channel"
    or "none"), from the run config's attack and its options (for the ServerApp's
    ``AdversaryGrid``); ``num_partitions`` is not needed and kept for callers."""
    from flwr_byz import attacks
    from flwr_byz.schema import NO_ATTACK, parse_json_options

    name = str(run_config.get("attack", NO_ATTACK) or NO_ATTACK)
    options = parse_json_options(run_config.get("attack-options"), "attack-options")
    return attacks.knowledge(name, options)


def discover_roles(
    grid: Grid, timeout: float | None = 120.0, min_nodes: int = 1
) -> dict[int, tuple[int, bool]]:
    """Ask every node (a "query" message answered by ``flwr_byz.clients.app``'s query handler) for
    its
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
        roles[node] = (as_int(role["partition-id"], "partition-id"), bool(role["is-byzantine"]))
    missing = sorted(set(node_ids) - set(roles))
    if failures or missing:
        raise RuntimeError(
            f"discover_roles: no role from nodes {missing} of {node_ids}"
            + (f"; errors: {'; '.join(failures)}" if failures else "")
        )
    return roles
