"""The run-config schema: every key of a run, its type, default, group and checks, in one place.

One :class:`RunConfig` is the run as the YAML experiments, ``flwr run``'s run config, the
ServerApp and the ClientApps see it; :class:`ClientConfig` is the same run seen from one node
(its partition and role). Keys are flat (``num-byzantine``, ``rule-options``) because Flower's run
config, the YAML sweeps and the run names are flat; each field belongs to one of :data:`GROUPS`,
which the documentation's table (:func:`fields_table`) is generated from.

Values are coerced from the annotations (Flower run-config values are bool/int/float/str only, so
option mappings arrive as JSON strings) and validated against the registries of rules, attacks,
data sets and models when the config is built, so that a bad run fails before any training,
naming the field. No Flower import: the schema is shared by the simulations, the ClientApp and
users' own code.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr_byz import attacks, data, gars, models

GROUPS = {
    "data": "data / model",
    "clients": "clients",
    "server": "server",
    "adversary": "adversary",
    "bookkeeping": "bookkeeping",
}
NO_ATTACK = "none"
PARTITIONINGS = data.SCHEMES
CHANNEL_FAULTS = (NO_ATTACK, *(name for name in attacks.NAMES if name in attacks.CHANNEL))
UPDATE_MODES = ("gradient", "weights")
MOMENTUM_PLACES = ("worker", "server")
INITS = models.INITS
IDLE_RUN = ("fail", "warn")  # a run whose rule never aggregated or whose attack never ran
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"


def _key(group: str, default: Any, doc: str) -> Any:
    """A schema field: its default (a mapping default is a fresh dict), group and meaning."""
    metadata = {"group": group, "doc": doc}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """One run: the run-config schema as typed fields (see the module docstring).

    ``to_flower()`` gives the flat Flower run config (bool/int/float/str values, mappings as JSON
    strings); ``from_flower()`` parses it back.
    """

    dataset: str = _key("data", "mnist5k", "a `flwr_byz.data` name")
    data_root: str = _key("data", "", "folder of the data set's files (full MNIST's IDX files)")
    model: str = _key("data", "mlp", "a `flwr_byz.models` name")
    init: str = _key("data", "default", "`xavier`: the MLP's first layer xavier_uniform_")
    partitioning: str = _key(
        "data", "shared", "how the training set is split: " + " / ".join(PARTITIONINGS)
    )
    dirichlet_alpha: float = _key("data", 0.5, "concentration of the `dirichlet` split")
    similarity_gamma: float = _key("data", 0.5, "`gamma_similarity`: each worker's i.i.d. share")
    seed: int = _key("data", 0, "seeds the split, the model and the attacks")
    test_fraction: float = _key("data", 0.2, "held-out share of a data set without a test split")
    num_clients: int = _key("clients", 10, "n, the nodes of the federation")
    update_mode: str = _key("clients", "gradient", "what clients send: gradient / weights")
    batch_size: int = _key("clients", 83, "examples per local step")
    local_epochs: int = _key("clients", 1, "local passes (weights mode)")
    local_lr: float = _key("clients", 0.1, "local learning rate (weights mode)")
    momentum: float = _key("clients", 0.0, "mu, in [0, 1)")
    momentum_place: str = _key("clients", "worker", "where momentum is kept: worker / server")
    weight_decay: float = _key("clients", 0.0, "l2 added to the clients' gradients")
    clip_grad: float = _key("clients", 0.0, "clients' gradient-norm clip (0 = off)")
    rule: str = _key("server", "average", "the aggregation rule, a `flwr_byz.gars` name")
    rule_options: dict[str, Any] = _key("server", {}, "the rule's options (mapping)")
    pre: str = _key(
        "server", "", 'pre-aggregation chain: "" (none), "nnm,bucketing" or a JSON list of steps'
    )
    root_size: int = _key("server", 100, "fltrust: size of the server's root data set")
    num_byzantine: int = _key("server", 0, "f, the Byzantine nodes the rule tolerates")
    learning_rate: float = _key("server", 0.1, "the server's step size eta")
    lr_schedule_r: float = _key("server", 0.0, "0 = constant, else eta_0 r / (t + r)")
    num_rounds: int = _key("server", 10, "rounds of the run")
    eval_every: int = _key("server", 1, "test-set evaluation every k-th round (and the last)")
    fraction_train: float = _key("server", 1.0, "share of the nodes sampled each round")
    device: str = _key("server", "auto", "the strategy's device: auto, cpu, cuda[:i], mps")
    client_device: str = _key("clients", "cpu", "where the ClientApps train: auto, cpu, cuda[:i]")
    min_nodes: int = _key(
        "server", 0, "a round goes on with at least this many nodes (0 = the rule's minimum)"
    )
    node_wait_timeout: float = _key("server", 120.0, "seconds to wait for min-nodes")
    idle_run: str = _key(
        "bookkeeping", "fail", "a run whose rule never aggregated or attack never ran: fail / warn"
    )
    byzantine_partitions: str = _key(
        "adversary", "", 'the attackers\' partition ids "0,3,5" ("" = the first ones)'
    )
    num_attackers: int | None = _key("adversary", None, "attacking nodes (unset = f)")
    attack: str = _key("adversary", NO_ATTACK, "none or a `flwr_byz.attacks` name")
    attack_options: dict[str, Any] = _key("adversary", {}, "the attack's options (mapping)")
    coordinator_address: str = _key(
        "adversary", "", 'the colluders\' coordinator ("" = one per run when needed)'
    )
    coordinator_timeout: float = _key("adversary", 60.0, "seconds an attacker waits for it")
    channel_fault: str = _key(
        "adversary", "none", "corrupts what the server receives: none / bit_flip / gambler"
    )
    channel_fault_options: dict[str, Any] = _key("adversary", {}, "the fault's options (mapping)")
    experiment: str = _key("bookkeeping", "", "the experiment's name")
    results_dir: str = _key("bookkeeping", "results", "where runs are written")
    run_name: str = _key("bookkeeping", "run", "the run's folder under results-dir")
    client_state_dir: str = _key("bookkeeping", "", "where clients keep state between rounds")

    def __post_init__(self) -> None:
        _validate(self)
        _validate_registries(self)

    @property
    def attackers(self) -> int:
        """Number of Byzantine clients that actually attack (defaults to ``num_byzantine``)."""
        if self.byzantine_partitions:
            return len(parse_partitions(self.byzantine_partitions))
        return self.num_byzantine if self.num_attackers is None else self.num_attackers

    @property
    def byzantine_partition_ids(self) -> list[int]:
        """Partition ids of the Byzantine clients (none without an attack)."""
        if self.byzantine_partitions:
            return parse_partitions(self.byzantine_partitions)
        if self.attack == NO_ATTACK:
            return []
        return list(range(self.attackers))

    @property
    def attack_knowledge(self) -> str:
        """What the run's adversary knows each round: "none", "own", "colluders", "omniscient"
        or "channel" (the threat model of ``flwr_byz.attacks``, from the attack and its options)."""
        return attacks.knowledge(self.attack, self.attack_options)

    @property
    def run_dir(self) -> Path:
        """Directory holding this run's results and checkpoint."""
        return Path(self.results_dir) / self.run_name

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_flower(self) -> dict[str, bool | int | float | str]:
        """Flat Flower run config with dashed keys; mappings become JSON strings."""
        out: dict[str, bool | int | float | str] = {}
        for f in dataclasses.fields(RunConfig):
            value = getattr(self, f.name)
            if f.name == "num_attackers":
                value = self.attackers
            if isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            out[to_key(f.name)] = value
        return out

    def identity(self) -> dict[str, Any]:
        """The fields that define what is computed (not where results go or for how long)."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(RunConfig)}
        for name in _NOT_IDENTITY:
            d.pop(name)
        d["num_attackers"] = self.attackers
        if d["init"] == "default":  # runs recorded before the key existed keep their identity
            d.pop("init")
        if not d["pre"]:
            d.pop("pre")
        if d["partitioning"] != "gamma_similarity":
            d.pop("similarity_gamma")
        if d["rule"] != "fltrust":
            d.pop("root_size")
        return d

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Parse a flat Flower run config (dashed keys) over ``base`` (defaults if None).

        Unknown keys are ignored (the Flower app config may hold other components' keys).
        """
        values = _values(base) if base is not None else {}
        for key, value in run_config.items():
            name = to_attr(str(key))
            if name in FIELD_TYPES:
                values[name] = value
        return from_mapping(values)


# Fields that say where results go, for how long a run goes on, where it computes, or when it
# evaluates: not what it computes.
_NOT_IDENTITY = (
    "num_rounds",
    "results_dir",
    "run_name",
    "client_state_dir",
    "coordinator_address",
    "coordinator_timeout",
    "experiment",
    "device",
    "client_device",
    "min_nodes",
    "node_wait_timeout",
    "idle_run",
    "eval_every",
)

#: field name -> its annotation (the coercion reads it)
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
DICT_FIELDS = tuple(name for name, kind in FIELD_TYPES.items() if typing.get_origin(kind) is dict)


def _values(cfg: RunConfig) -> dict[str, Any]:
    """The run's field values (the schema's fields only, option mappings copied)."""
    return {
        f.name: (dict(v) if isinstance(v := getattr(cfg, f.name), dict) else v)
        for f in dataclasses.fields(RunConfig)
    }


def to_key(name: str) -> str:
    """Field name to run-config key: ``num_byzantine`` -> ``num-byzantine``."""
    return name.replace("_", "-")


def to_attr(key: str) -> str:
    """Run-config key to field name: ``num-byzantine`` -> ``num_byzantine``."""
    return key.replace("-", "_")


def parse_partitions(text: str) -> list[int]:
    """Parse ``"5,0,3"`` into the sorted partition ids ``[0, 3, 5]`` (an attacker's rank is its
    place in that order); clear error on junk."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        return sorted(int(p) for p in parts)
    except ValueError as err:
        raise ValueError(
            f"byzantine-partitions must be comma-separated integers, got {text!r}"
        ) from err


def parse_json_options(text: Any, key: str) -> dict[str, Any]:
    """A mapping given as a mapping or a JSON object string (``""``/None = empty); errors name
    the config key."""
    if isinstance(text, Mapping):
        return dict(text)
    if text is None or str(text).strip() == "":
        return {}
    if not isinstance(text, str):
        raise ValueError(f"{key} must be a mapping (or a JSON object string), got {text!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{key} must be a JSON object, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a JSON object, got {text!r}")
    return value


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    try:
        as_float = float(value)
    except ValueError as err:
        raise ValueError(f"{key} must be an integer, got {value!r}") from err
    if as_float != int(as_float):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return int(as_float)


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key} must be a number, got {value!r}") from err


def _as_str(key: str, value: Any) -> str:
    if isinstance(value, list | dict):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return "" if value is None else str(value)


def _coerce(name: str, value: Any) -> Any:
    """One field value converted to its annotated type, or a ValueError naming the field."""
    key, kind = to_key(name), FIELD_TYPES[name]
    if typing.get_origin(kind) is dict:
        return parse_json_options(value, key)
    if isinstance(kind, types.UnionType) and type(None) in kind.__args__:  # unset: None, "", -1
        if value is None or value == "" or (isinstance(value, int) and value < 0):
            return None
        (kind,) = (arg for arg in kind.__args__ if arg is not type(None))
    convert: dict[Any, Callable[[str, Any], Any]] = {int: _as_int, float: _as_float, str: _as_str}
    return convert[kind](key, value)


def from_mapping(values: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from field values (underscore or dash keys), coercing types.

    Unknown fields raise a ValueError that lists the valid ones.
    """
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        name = to_attr(str(raw_key))
        if name not in FIELD_TYPES:
            valid = ", ".join(sorted(to_key(n) for n in FIELD_TYPES))
            raise ValueError(f"unknown field {raw_key!r}; valid fields: {valid}")
        kwargs[name] = _coerce(name, value)
    return RunConfig(**kwargs)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _validate(cfg: RunConfig) -> None:
    """Check value ranges and choices; errors name the field."""
    for key, value, choices in (
        ("partitioning", cfg.partitioning, PARTITIONINGS),
        ("update-mode", cfg.update_mode, UPDATE_MODES),
        ("channel-fault", cfg.channel_fault, CHANNEL_FAULTS),
        ("momentum-place", cfg.momentum_place, MOMENTUM_PLACES),
        ("init", cfg.init, INITS),
        ("idle-run", cfg.idle_run, IDLE_RUN),
    ):
        _need(value in choices, f"{key} must be one of {choices}, got {value!r}")
    _need(cfg.num_clients >= 1, f"num-clients must be >= 1, got {cfg.num_clients}")
    _need(cfg.num_byzantine >= 0, f"num-byzantine must be >= 0, got {cfg.num_byzantine}")
    _need(cfg.num_rounds >= 1, f"num-rounds must be >= 1, got {cfg.num_rounds}")
    _need(cfg.eval_every >= 1, f"eval-every must be >= 1, got {cfg.eval_every}")
    _need(cfg.batch_size >= 1, f"batch-size must be >= 1, got {cfg.batch_size}")
    _need(cfg.local_epochs >= 1, f"local-epochs must be >= 1, got {cfg.local_epochs}")
    _need(0.0 <= cfg.momentum < 1.0, f"momentum must be in [0, 1), got {cfg.momentum}")
    _need(cfg.learning_rate > 0.0, f"learning-rate must be > 0, got {cfg.learning_rate}")
    _need(cfg.lr_schedule_r >= 0.0, f"lr-schedule-r must be >= 0, got {cfg.lr_schedule_r}")
    _need(cfg.weight_decay >= 0.0, f"weight-decay must be >= 0, got {cfg.weight_decay}")
    _need(cfg.clip_grad >= 0.0, f"clip-grad must be >= 0 (0 = off), got {cfg.clip_grad}")
    _need(
        0.0 < cfg.fraction_train <= 1.0,
        f"fraction-train must be in (0, 1], got {cfg.fraction_train}",
    )
    _need(
        0.0 < cfg.test_fraction < 1.0, f"test-fraction must be in (0, 1), got {cfg.test_fraction}"
    )
    _need(cfg.dirichlet_alpha > 0.0, f"dirichlet-alpha must be > 0, got {cfg.dirichlet_alpha}")
    _need(
        0.0 <= cfg.similarity_gamma <= 1.0,
        f"similarity-gamma must be in [0, 1], got {cfg.similarity_gamma}",
    )
    _need(
        cfg.coordinator_timeout > 0.0,
        f"coordinator-timeout must be > 0, got {cfg.coordinator_timeout}",
    )
    _need(
        0 <= cfg.min_nodes <= cfg.num_clients,
        f"min-nodes must be in [0, num-clients={cfg.num_clients}] (0 = the rule's minimum), "
        f"got {cfg.min_nodes}",
    )
    _need(
        cfg.node_wait_timeout > 0.0,
        f"node-wait-timeout must be > 0, got {cfg.node_wait_timeout}",
    )
    _need(
        bool(re.fullmatch(r"[A-Za-z0-9._=,+-]+(/[A-Za-z0-9._=,+-]+)*", cfg.run_name))
        and ".." not in cfg.run_name.split("/"),
        f"run-name must be a relative path of letters, digits and ._=,+-, got {cfg.run_name!r}",
    )
    ids = cfg.byzantine_partition_ids
    _need(
        all(0 <= i < cfg.num_clients for i in ids),
        f"byzantine-partitions must lie in [0, num-clients={cfg.num_clients}), got {ids}",
    )
    _need(len(set(ids)) == len(ids), f"byzantine-partitions has duplicates: {ids}")
    _need(
        0 <= cfg.attackers <= cfg.num_clients,
        f"num-attackers must be in [0, num-clients={cfg.num_clients}], got {cfg.attackers}",
    )
    _need(
        cfg.num_byzantine < cfg.num_clients,
        f"num-byzantine must be < num-clients, got f={cfg.num_byzantine}, n={cfg.num_clients}",
    )
    for key, value in (("device", cfg.device), ("client-device", cfg.client_device)):
        _need(
            re.fullmatch(DEVICE_PATTERN, value) is not None,
            f"{key} must be auto, cpu, cuda, cuda:<index> or mps, got {value!r}",
        )
    _need(cfg.root_size >= 1, f"root-size must be >= 1, got {cfg.root_size}")


def pre_steps(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The run config's ``pre`` as the checked chain ``[(name, options), ...]``: "" is none, a
    JSON list holds steps as the strategies take them, else comma-separated step names."""
    from flwr_byz.gars.preaggregation import normalize_steps

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
    return normalize_steps(steps)


def _validate_registries(cfg: RunConfig) -> None:
    """Names and options against the registries, and n against the rule's requirement for f,
    so that a bad run fails when the config is read, not in round 1 (errors name the field)."""
    _need(cfg.dataset in data.NAMES, f"dataset must be one of {data.NAMES}, got {cfg.dataset!r}")
    known_models = models.NAMES + models.BEYOND_NAMES
    _need(cfg.model in known_models, f"model must be one of {known_models}, got {cfg.model!r}")
    try:
        rule = gars.get(cfg.rule)
    except ValueError as err:
        raise ValueError(f"rule: {err}") from None
    allowed = rule.options
    unknown = sorted(set(cfg.rule_options) - set(allowed))
    _need(
        not unknown,
        f"rule-options {unknown} are not options of rule {cfg.rule!r}; it takes "
        f"{list(allowed) or 'none'}",
    )
    sampled = max(1, round(cfg.fraction_train * cfg.num_clients))
    required = rule.min_n(cfg.num_byzantine, **cfg.rule_options)
    _need(
        sampled >= required,
        f"rule {cfg.rule!r} with num-byzantine={cfg.num_byzantine} needs at least {required} "
        f"nodes per round, but num-clients={cfg.num_clients} x fraction-train="
        f"{cfg.fraction_train} gives {sampled}: every round would keep the model",
    )
    try:
        pre_steps(cfg.pre)
    except (ValueError, TypeError) as err:
        raise ValueError(f"pre: {err}") from None
    if cfg.attack != NO_ATTACK:
        names = (NO_ATTACK, *attacks.NAMES, *attacks.BEYOND_NAMES)
        _need(cfg.attack in names, f"unknown attack {cfg.attack!r}: attack must be one of {names}")
        attack = attacks.get(cfg.attack)
        try:
            attack.check_options(cfg.attack_options)
        except ValueError as err:
            raise ValueError(f"attack-options: {err}") from None


def fields_table() -> str:
    """The schema as a Markdown table (group, key, default, meaning): the documentation's copy,
    kept equal to this by a test."""
    defaults = RunConfig()
    lines = ["| group | key | default | meaning |", "|---|---|---|---|"]
    for group, title in GROUPS.items():
        for f in dataclasses.fields(RunConfig):
            if f.metadata["group"] != group:
                continue
            value = getattr(defaults, f.name)
            shown = "{}" if isinstance(value, dict) else ("unset" if value is None else value)
            shown = '""' if shown == "" else shown
            lines.append(f"| {title} | `{to_key(f.name)}` | `{shown}` | {f.metadata['doc']} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ClientConfig(RunConfig):
    """The run seen from one node: the run's fields and the node's ``partition_id`` among
    ``num_partitions`` (from Flower's node config), with the node's role derived from them."""

    partition_id: int = 0
    num_partitions: int = 1

    def __post_init__(self) -> None:
        _need(
            0 <= self.partition_id < self.num_partitions,
            f"partition-id must lie in [0, num-partitions={self.num_partitions}), "
            f"got {self.partition_id}",
        )
        bad = [pid for pid in self.byzantine_partition_ids if pid >= self.num_partitions]
        _need(
            not bad,
            f"byzantine-partitions {bad} are not below num-partitions={self.num_partitions}",
        )
        super().__post_init__()

    @property
    def run(self) -> RunConfig:
        """The run without the node."""
        return from_mapping(_values(self))

    @property
    def is_byzantine(self) -> bool:
        """Whether this node's partition is one of the adversary's (and an attack is set)."""
        return self.attack != NO_ATTACK and self.partition_id in self.byzantine_partition_ids

    @property
    def attacker_rank(self) -> int:
        """Index of this partition among the Byzantine ones (0-based); -1 when honest."""
        ids = self.byzantine_partition_ids
        return ids.index(self.partition_id) if self.partition_id in ids else -1

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
        return self.num_partitions - len(self.byzantine_partition_ids)

    @classmethod
    def from_configs(
        cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any]
    ) -> ClientConfig:
        """The node view from Flower's run config and node config (``partition-id``,
        ``num-partitions``); ``num-clients`` is the node count when the run config omits it."""
        if "partition-id" not in node_config or "num-partitions" not in node_config:
            raise ValueError(
                "node config must set 'partition-id' and 'num-partitions' "
                f"(got keys {sorted(node_config)})"
            )
        num_partitions = _as_int("num-partitions", node_config["num-partitions"])
        run = {to_attr(str(k)): v for k, v in run_config.items() if to_attr(str(k)) in FIELD_TYPES}
        run.setdefault("num_clients", num_partitions)
        values = {name: _coerce(name, value) for name, value in run.items()}
        return cls(
            **values,
            partition_id=_as_int("partition-id", node_config["partition-id"]),
            num_partitions=num_partitions,
        )
