"""``byzantine_mod``: turn any Flower ClientApp's node into a Byzantine one.

The mod lets the user's code train as usual, then rewrites the train reply's model. In "update"
mode (the default, FedAvg-style weights) an attack ``A`` acts on the update against the received
model: ``reply' = global + A(reply - global)``; in "reply" mode on the reply itself. Omniscient
attacks get the round's honest replies relayed inside the train message by ``adversary_grid``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from torch import Tensor

from flwr_byz import attacks
from flwr_byz._values import as_int

from ._records import LEGACY_INS, LEGACY_RES, find_arrays, flat, rebuild, same_layout, to_arrays
from ._role import DATA, OMNISCIENT, Role, resolve_role, seeded_generator

RELAY_ARRAYS = "flwr-byz.honest"  # ArrayRecord {"vectors": (k, d) float32} of honest replies
RELAY_CONFIG = "flwr-byz.round"  # ConfigRecord {"honest-count", "byzantine-count"}
NEEDS_HONEST = "flwr-byz: needs the honest vectors of the round"  # error reason (marker)
NEEDS_HONEST_CODE = 0  # ErrorCode.UNKNOWN: the marker is told by its reason, not its code
ATTACKED = "flwr-byz.attacked"  # ConfigRecord {"attack", "round"} on every attacked train reply

_ACTIVE: contextvars.ContextVar[tuple[Role, int] | None] = contextvars.ContextVar(
    "flwr_byz_active_role", default=None
)


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == "train"


def server_round(message: Message) -> int:
    """The round: config ``server-round`` (Message API or legacy config), else the group id."""
    for key in ("config", "fitins.config"):
        config = message.content.config_records.get(key)
        if config is not None:
            for name in ("server-round", "server_round", "round"):
                if name in config:
                    return as_int(config[name], name)
    group = message.metadata.group_id
    return int(group) if str(group).isdigit() else 0


def _pop_relay(content: RecordDict) -> tuple[Tensor, int, int] | None:
    """Remove the relay records (the user's code never sees them); (vectors, k, f) or None."""
    arrays = content.array_records.get(RELAY_ARRAYS)
    config = content.config_records.get(RELAY_CONFIG)
    for key in (RELAY_ARRAYS, RELAY_CONFIG):
        if key in content:
            del content[key]
    if arrays is None or config is None:
        return None
    vectors = torch.from_numpy(arrays["vectors"].numpy().copy()).to(torch.float64)
    honest = as_int(config["honest-count"], "honest-count")
    return vectors, honest, as_int(config["byzantine-count"], "byzantine-count")


_OWN_OPTIONS = {
    "sign_flip": {"scale"},
    "gaussian": {"std"},
    "bit_flip": {"coordinates", "bits"},
    "gambler": {"shards", "shard", "probability", "scale"},
}


def apply_own(role: Role, vector: Tensor, rnd: int) -> Tensor:
    """The own-vector attack of ``role`` on ``vector`` ``(d,)`` (an update or a reply)."""
    opts = dict(role.options)
    unknown = set(opts) - _OWN_OPTIONS.get(role.attack, set())
    if unknown:
        raise ValueError(
            f"byzantine_mod: attack {role.attack!r} does not take option(s) {sorted(unknown)}; "
            f"it takes {sorted(_OWN_OPTIONS.get(role.attack, set())) or 'none'}"
        )
    if role.attack == "sign_flip":
        return float(opts.pop("scale", 1.0)) * attacks.sign_flip(vector)
    if role.attack == "gaussian":
        like = vector.unsqueeze(0)
        std = float(opts.pop("std", 200.0))
        gen = role.generator("gaussian", rnd)
        return attacks.gaussian(like, role.attackers + 1, role.attackers, std=std, generator=gen)
    if role.attack == "bit_flip":
        own = vector.to(torch.float32)
        count = min(int(opts.pop("coordinates", 1000)), own.numel())
        columns = torch.arange(role.rank, count, max(role.attackers, 1))
        bits = tuple(opts.pop("bits", (22, 30, 31, 32)))
        out = attacks.bit_flip(own.unsqueeze(0), 1, coordinates=columns, bits=bits)
        return out[0].to(vector.dtype)  # type: ignore[index]
    if role.attack == "gambler":
        shards = int(opts.pop("shards", 10))
        shard = opts.pop("shard", None)
        if shard is None:  # the same shard for every sender of the round
            shared = seeded_generator(role.seed, "gambler-shard", rnd)
            shard = int(torch.randint(shards, (1,), generator=shared))
        out = attacks.gambler(
            vector.unsqueeze(0),
            shards,
            probability=float(opts.pop("probability", 0.0005)),
            scale=float(opts.pop("scale", -1e20)),
            generator=role.generator("gambler", rnd),
            shard=int(shard),
        )
        return out[0]  # type: ignore[index]
    raise ValueError(f"byzantine_mod: {role.attack!r} is not an own-vector attack")


def apply_omniscient(role: Role, honest: Tensor, n: int, f: int) -> Tensor:
    """The omniscient attack of ``role`` on the ``(k, d)`` honest vectors, ``n`` and ``f``."""
    fn = attacks.get(role.attack)
    try:
        return fn(honest, n, f, **dict(role.options))
    except TypeError as error:
        raise ValueError(f"byzantine_mod: bad options for {role.attack!r}: {error}") from None


def _attack_reply(
    role: Role, msg: Message, reply: Message, rnd: int, relay: tuple[Tensor, int, int] | None
) -> None:
    """Rewrite ``reply``'s model in place with the attack."""
    legacy = LEGACY_RES in reply.content.array_records
    found = find_arrays(reply.content, LEGACY_RES)
    if found is None:
        raise ValueError("byzantine_mod: the train reply holds no single model ArrayRecord")
    key, record = found
    arrays = to_arrays(record)
    sent = find_arrays(msg.content, LEGACY_INS if legacy else "arrays")
    base = to_arrays(sent[1]) if sent is not None else None
    update = role.vector == "update" and base is not None and same_layout(arrays, base)
    origin = flat(base) if update and base is not None else None
    own = flat(arrays)
    if relay is not None and role.attack in OMNISCIENT:
        honest, k, f = relay
        if origin is not None:
            honest = honest - origin
        vector = apply_omniscient(role, honest, k + f, f)
    else:
        vector = apply_own(role, own - origin if origin is not None else own, rnd)
    if origin is not None:
        vector = origin + vector.to(origin.dtype)
    reply.content.array_records[key] = rebuild(vector, arrays, record)


class ByzantineMod:
    """The mod ``byzantine_mod`` returns: a plain picklable object (Flower's simulation engine
    ships the ClientApp, mods included, to its Ray workers), called as a Flower client mod."""

    def __init__(
        self,
        attack: str | None = None,
        options: Mapping[str, Any] | None = None,
        byzantine: bool | Callable[[Context], bool] | None = None,
        vector: str | None = None,
    ) -> None:
        self.attack = attack
        self.options = dict(options) if options is not None else None
        self.byzantine = byzantine
        self.vector = vector

    def role(self, context: Context) -> Role:
        """This node's role under the mod's arguments and the context's configs."""
        return resolve_role(
            context,
            attack=self.attack,
            options=self.options,
            byzantine=self.byzantine,
            vector=self.vector,
        )

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the user's code, then attack a Byzantine node's train reply."""
        if not _is_train(msg):
            return call_next(msg, context)
        relay = _pop_relay(msg.content)
        role = self.role(context)
        if not role.byzantine:
            return call_next(msg, context)
        if role.attack in OMNISCIENT and relay is None:
            # ask adversary_grid for the round's honest vectors (without it: an error reply)
            return Message(Error(code=NEEDS_HONEST_CODE, reason=NEEDS_HONEST), reply_to=msg)
        rnd = server_round(msg)
        token = _ACTIVE.set((role, rnd))
        try:
            reply = call_next(msg, context)
        finally:
            _ACTIVE.reset(token)
        if reply.has_error():
            return reply
        if role.attack not in DATA:
            _attack_reply(role, msg, reply, rnd, relay)
        # the mark adversary_grid counts (and strips); Flower's strategies ignore a ConfigRecord
        reply.content.config_records[ATTACKED] = ConfigRecord({"attack": role.attack, "round": rnd})
        return reply


def byzantine_mod(
    attack: str | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    byzantine: bool | Callable[[Context], bool] | None = None,
    vector: str | None = None,
) -> Mod:
    """A Flower client mod that makes Byzantine nodes attack their train replies.

    Role and attack come from the arguments, else from the node config (``byzantine``,
    ``attack``, ``attack-options``), else from the run config (``byzantine-partitions`` with the
    node's ``partition-id``, ``attack``, ``attack-options``); see ``resolve_role``. Honest nodes
    and non-train messages pass through untouched. Data attacks (``label_flip``, ``backdoor``)
    leave the reply alone: the user's training honours them through ``poison_batch``.
    ``byzantine`` as a predicate must be picklable (a module-level function) under Ray.
    """
    return ByzantineMod(attack, options, byzantine, vector)


def active_role(context: Context | None = None) -> Role:
    """The role the mod runs this train call under; without the mod, resolved from ``context``."""
    active = _ACTIVE.get()
    if active is not None:
        return active[0]
    return resolve_role(context) if context is not None else Role()


def is_byzantine(context: Context | None = None) -> bool:
    """True when this node attacks (see ``active_role``)."""
    return active_role(context).byzantine


def poison_batch(
    context: Context | None,
    x: Tensor,
    y: Tensor,
    num_classes: int | None = None,
    trigger_value: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The batch the node should train on: unchanged for honest nodes and non-data attacks.

    ``label_flip``: labels ``l -> C - 1 - l`` (``num_classes``, else option ``num-classes``, 10).
    ``backdoor``: the first ``fraction`` (option, 0.5) of the images get the 5x5 top-left trigger
    (``trigger_value``, else option ``trigger``, else the batch maximum) and label
    ``attacks.BACKDOOR_TARGET`` (option ``target``). Returns new tensors.
    """
    role = active_role(context)
    opts = role.options
    if role.attack == "label_flip":
        classes = int(num_classes or opts.get("num-classes", 10))
        return x, attacks.label_flip(y, classes)
    if role.attack == "backdoor":
        count = int(round(float(opts.get("fraction", 0.5)) * x.shape[0]))
        value = trigger_value if trigger_value is not None else opts.get("trigger")
        x, y = x.clone(), y.clone()
        if count:
            x[:count] = attacks.add_backdoor_trigger(x[:count], value)
            y[:count] = int(opts.get("target", attacks.BACKDOOR_TARGET))
        return x, y
    return x, y
