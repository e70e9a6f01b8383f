"""Who attacks and how: the Byzantine role of a node, from explicit arguments or its configs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Context

OWN_VECTOR = frozenset({"sign_flip", "gaussian", "bit_flip", "gambler"})
DATA = frozenset({"label_flip", "backdoor"})
OMNISCIENT = frozenset(
    {"alie", "ipm", "omniscient_negative", "lp_coordinate", "mimic", "minmax", "minsum"}
)
SUPPORTED = OWN_VECTOR | DATA | OMNISCIENT
VECTORS = ("update", "reply")
_TRUE = {"1", "true", "yes", "on", "byzantine"}


@dataclass(frozen=True)
class Role:
    """One node's role in a round.

    ``attack``: "none" (honest) or a name in ``SUPPORTED``; ``options``: the attack's keywords;
    ``vector``: "update" (attack ``reply - global``, weights mode) or "reply" (attack the reply
    itself, e.g. a gradient); ``rank``/``attackers``: this node's index among the Byzantine nodes
    and their number (bit flip spreads its coordinates over them); ``seed``: for random attacks.
    """

    attack: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    vector: str = "update"
    rank: int = 0
    attackers: int = 1
    seed: int = 0

    @property
    def byzantine(self) -> bool:
        """True when the node attacks."""
        return self.attack != "none"

    def generator(self, *parts: object) -> torch.Generator:
        """A CPU generator seeded by hashing (seed, rank, parts): reproducible per node, round."""
        return seeded_generator(self.seed, self.rank, *parts)


def seeded_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a hash of ``parts`` (stable across processes)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _options(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    parsed = json.loads(str(value))
    if not isinstance(parsed, dict):
        raise ValueError(f"attack-options must be a JSON object, got {value!r}")
    return parsed


def _partitions(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return [int(part) for part in str(value).replace(" ", "").split(",") if part]


def _lookup(context: Context, key: str) -> Any:
    """``key`` from the node config, else the run config, else None."""
    if key in context.node_config:
        return context.node_config[key]
    return context.run_config.get(key)


def resolve_role(
    context: Context,
    *,
    attack: str | None = None,
    options: Mapping[str, Any] | None = None,
    byzantine: bool | Callable[[Context], bool] | None = None,
    vector: str | None = None,
) -> Role:
    """The node's ``Role``: explicit arguments first, then the node config, then the run config.

    Byzantine when ``byzantine`` says so (a bool or a predicate of the context), else when the
    node config's ``byzantine`` is true, else when its ``partition-id`` is listed in the run
    config's ``byzantine-partitions`` (comma-separated; "" = the first ``num-attackers``, default
    ``num-byzantine``), and the attack (``attack`` / ``attack-options``) is not "none".
    """
    name = str(attack if attack is not None else (_lookup(context, "attack") or "none"))
    opts = dict(options) if options is not None else _options(_lookup(context, "attack-options"))
    partition = context.node_config.get("partition-id")
    listed = _partitions(context.run_config.get("byzantine-partitions", ""))
    if not listed:
        count = context.run_config.get("num-attackers", context.run_config.get("num-byzantine", 0))
        listed = list(range(int(count or 0)))
    if callable(byzantine):
        is_byz = bool(byzantine(context))
    elif byzantine is not None:
        is_byz = bool(byzantine)
    elif "byzantine" in context.node_config:
        is_byz = str(context.node_config["byzantine"]).strip().lower() in _TRUE
    else:
        is_byz = partition is not None and int(partition) in listed
    if not is_byz or name == "none":
        return Role()
    if name not in SUPPORTED:
        raise ValueError(
            f"byzantine_mod: unknown or unsupported attack {name!r}; "
            f"supported: {', '.join(sorted(SUPPORTED))}"
        )
    chosen = str(vector or opts.pop("vector", "update"))
    if chosen not in VECTORS:
        raise ValueError(f"byzantine_mod: vector must be one of {VECTORS}, got {chosen!r}")
    opts.pop("vector", None)
    rank = int(opts.pop("rank", listed.index(int(partition)) if partition in listed else 0))
    attackers = int(opts.pop("attackers", max(len(listed), 1)))
    seed = int(opts.pop("seed", context.run_config.get("seed", 0)))
    return Role(name, opts, chosen, rank, attackers, seed)
