"""Typed client configuration, parsed once from Flower's run config and node config.

Flower run-config values are bool/int/float/str only, so lists arrive as comma-separated strings
and option dictionaries as JSON strings; this module is the one place that decodes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr_byz import data

UPDATE_MODES = ("gradient", "weights")
MOMENTUM_PLACES = ("worker", "server")
PARTITIONINGS = data.SCHEMES  # flwr_byz.data partition schemes
NO_ATTACK = "none"


def _get(config: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    """``config[key]`` as ``kind`` (default when absent); ValueError naming the key otherwise."""
    value = config.get(key, default)
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"run config key {key!r} must be a {kind.__name__}, got {value!r}"
        ) from None


def pre_steps(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The run config's ``pre`` as the checked chain ``[(name, options), ...]``: "" is none, a
    JSON list holds steps as the strategies take them, else comma-separated step names."""
    from flwr_byz.strategy import normalize_pre

    text = str(text).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            steps = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON list of steps: {err}") from None
    else:
        steps = [name.strip() for name in text.split(",")]
    return normalize_pre(steps)


def parse_json_options(text: Any, key: str) -> dict[str, Any]:
    """Decode a JSON object given as a string (``""`` = empty); errors name the config key."""
    if isinstance(text, Mapping):
        return dict(text)
    if text is None or str(text).strip() == "":
        return {}
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"run config key {key!r} must be a JSON object, got {text!r}: {error}"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"run config key {key!r} must be a JSON object, got {text!r}")
    return value


def parse_partition_list(text: Any, key: str = "byzantine-partitions") -> tuple[int, ...]:
    """Comma-separated partition ids (``""`` = none) as a sorted tuple of distinct ints."""
    if isinstance(text, int) and not isinstance(text, bool):
        return (int(text),)
    items = [item.strip() for item in str(text or "").split(",") if item.strip()]
    try:
        ids = sorted({int(item) for item in items})
    except ValueError:
        raise ValueError(
            f"run config key {key!r} must be comma-separated integers, got {text!r}"
        ) from None
    if any(pid < 0 for pid in ids):
        raise ValueError(f"run config key {key!r} holds a negative partition id: {text!r}")
    return tuple(ids)


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs, decoded from run config + node config (see the shared schema)."""

    partition_id: int
    num_partitions: int
    dataset: str = "mnist5k"
    data_root: str = ""
    model: str = "mlp"
    partitioning: str = "shared"
    dirichlet_alpha: float = 0.5
    similarity_gamma: float = 0.5
    seed: int = 0
    test_fraction: float = 0.2
    update_mode: str = "gradient"
    batch_size: int = 83
    local_epochs: int = 1
    local_lr: float = 0.1
    momentum: float = 0.0
    momentum_place: str = "worker"
    weight_decay: float = 0.0
    clip_grad: float = 0.0
    rule: str = "average"
    rule_options: dict[str, Any] = field(default_factory=dict)
    pre: str = ""  # the deployed pre-aggregation chain (defence-aware attacks search against it)
    num_byzantine: int = 0
    learning_rate: float = 0.1
    fraction_train: float = 1.0
    byzantine_partitions: tuple[int, ...] = ()
    num_attackers: int = 0
    attack: str = NO_ATTACK
    attack_options: dict[str, Any] = field(default_factory=dict)
    coordinator_address: str = ""
    coordinator_timeout: float = 60.0
    client_state_dir: str = ""
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(f"update-mode must be one of {UPDATE_MODES}, got {self.update_mode!r}")
        if self.momentum_place not in MOMENTUM_PLACES:
            raise ValueError(
                f"momentum-place must be one of {MOMENTUM_PLACES}, got {self.momentum_place!r}"
            )
        if self.partitioning not in PARTITIONINGS:
            raise ValueError(
                f"partitioning must be one of {PARTITIONINGS}, got {self.partitioning!r}"
            )
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(
                f"partition-id must lie in [0, num-partitions={self.num_partitions}), "
                f"got {self.partition_id}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        bad = [pid for pid in self.byzantine_partitions if pid >= self.num_partitions]
        if bad:
            raise ValueError(
                f"byzantine-partitions {bad} are not below num-partitions={self.num_partitions}"
            )
        if self.attack != NO_ATTACK:
            from flwr_byz import attacks  # validates the name with a message listing all

            attacks.get(self.attack)

    @property
    def is_byzantine(self) -> bool:
        """Whether this node's partition is one of the adversary's (and an attack is set)."""
        return self.attack != NO_ATTACK and self.partition_id in self.byzantine_partitions

    @property
    def attacker_rank(self) -> int:
        """Index of this partition among the Byzantine ones (0-based); -1 when honest."""
        if self.partition_id not in self.byzantine_partitions:
            return -1
        return self.byzantine_partitions.index(self.partition_id)

    @property
    def worker_momentum(self) -> bool:
        """Whether honest clients send ``G_t = mu G_{t-1} + g_t`` (Momentum paper, eq. 6)."""
        return (
            self.update_mode == "gradient"
            and self.momentum_place == "worker"
            and (self.momentum > 0.0)
        )

    @property
    def num_honest(self) -> int:
        """Honest partitions taking part in a full round (``fraction-train`` 1.0)."""
        return self.num_partitions - len(self.byzantine_partitions)

    @classmethod
    def from_configs(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any]
    ) -> ClientConfig:
        """Build from Flower's run config and node config (``partition-id``, ``num-partitions``)."""
        if "partition-id" not in node_config or "num-partitions" not in node_config:
            raise ValueError(
                "node config must set 'partition-id' and 'num-partitions' "
                f"(got keys {sorted(node_config)})"
            )
        num_partitions = _get(node_config, "num-partitions", None, int)
        num_byzantine = _get(run_config, "num-byzantine", 0, int)
        raw_attackers = run_config.get("num-attackers", "")
        num_attackers = (
            num_byzantine
            if raw_attackers in ("", None)
            else _get(run_config, "num-attackers", 0, int)
        )
        byzantine = parse_partition_list(run_config.get("byzantine-partitions", ""))
        if not byzantine:
            if num_attackers > num_partitions:
                raise ValueError(
                    f"num-attackers={num_attackers} exceeds num-partitions={num_partitions}"
                )
            byzantine = tuple(range(num_attackers))
        attack = str(run_config.get("attack", NO_ATTACK) or NO_ATTACK)
        return cls(
            partition_id=_get(node_config, "partition-id", None, int),
            num_partitions=num_partitions,
            dataset=_get(run_config, "dataset", "mnist5k", str),
            data_root=_get(run_config, "data-root", "", str),
            model=_get(run_config, "model", "mlp", str),
            partitioning=_get(run_config, "partitioning", "shared", str),
            dirichlet_alpha=_get(run_config, "dirichlet-alpha", 0.5, float),
            similarity_gamma=_get(run_config, "similarity-gamma", 0.5, float),
            seed=_get(run_config, "seed", 0, int),
            test_fraction=_get(run_config, "test-fraction", 0.2, float),
            update_mode=_get(run_config, "update-mode", "gradient", str),
            batch_size=_get(run_config, "batch-size", 83, int),
            local_epochs=_get(run_config, "local-epochs", 1, int),
            local_lr=_get(run_config, "local-lr", 0.1, float),
            momentum=_get(run_config, "momentum", 0.0, float),
            momentum_place=_get(run_config, "momentum-place", "worker", str),
            weight_decay=_get(run_config, "weight-decay", 0.0, float),
            clip_grad=_get(run_config, "clip-grad", 0.0, float),
            rule=_get(run_config, "rule", "average", str),
            rule_options=parse_json_options(run_config.get("rule-options", ""), "rule-options"),
            pre=_get(run_config, "pre", "", str),
            num_byzantine=num_byzantine,
            learning_rate=_get(run_config, "learning-rate", 0.1, float),
            fraction_train=_get(run_config, "fraction-train", 1.0, float),
            byzantine_partitions=byzantine,
            num_attackers=len(byzantine),
            attack=attack,
            attack_options=parse_json_options(
                run_config.get("attack-options", ""), "attack-options"
            ),
            coordinator_address=_get(run_config, "coordinator-address", "", str),
            coordinator_timeout=_get(run_config, "coordinator-timeout", 60.0, float),
            client_state_dir=_get(run_config, "client-state-dir", "", str),
            device=_get(run_config, "client-device", "cpu", str),
        )
