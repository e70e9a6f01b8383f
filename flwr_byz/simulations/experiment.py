"""Typed experiment configuration: YAML files, sweeps, and Flower run configs.

An experiment YAML holds the fields of :class:`RunConfig` (written with dashes, as in the
Flower run config: ``num-byzantine``, ``rule-options``...). A list in any field is a sweep
over that field, and the runs are the cartesian product of all lists. A ``cases`` list of
partial configs, each merged over the base fields and expanded the same way, gives unions
of sweeps (e.g. "no attack with average" next to "ALIE against four rules"). Configuration
is parsed and validated here, once, at the edge; everything downstream gets dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flwr_byz.data import SCHEMES

CONFIG_DIR = Path(__file__).parent / "configs"

PARTITIONINGS = SCHEMES  # flwr_byz.data's partition schemes
CHANNEL_FAULTS = ("none", "bit_flip", "gambler")
UPDATE_MODES = ("gradient", "weights")
MOMENTUM_PLACES = ("worker", "server")
INITS = ("default", "xavier")  # flwr_byz.models.INITS
IDLE_RUN = ("fail", "warn")  # a run whose rule never aggregated or whose attack never ran

# Keys of an experiment YAML that are not run-config fields.
META_KEYS = ("name", "description", "cases", "paper", "engine")


@dataclass(frozen=True)
class RunConfig:
    """One run of one experiment: the shared run-config schema as typed fields.

    ``to_flower()`` gives the flat Flower run config (bool/int/float/str values, dict
    options as JSON strings); ``from_flower()`` parses it back.
    """

    # data / model
    dataset: str = "mnist5k"
    data_root: str = ""
    model: str = "mlp"
    init: str = "default"  # "xavier": the MLP's first layer xavier_uniform_ (ALIE authors' code)
    partitioning: str = "shared"
    dirichlet_alpha: float = 0.5
    similarity_gamma: float = 0.5  # gamma_similarity: each honest worker's i.i.d. fraction
    seed: int = 0
    test_fraction: float = 0.2
    # clients
    num_clients: int = 10
    update_mode: str = "gradient"
    batch_size: int = 83
    local_epochs: int = 1
    local_lr: float = 0.1
    momentum: float = 0.0
    momentum_place: str = "worker"
    weight_decay: float = 0.0
    clip_grad: float = 0.0
    # server
    rule: str = "average"
    rule_options: dict[str, Any] = field(default_factory=dict)
    # pre-aggregation chain before the rule: "" (none), step names "nnm,bucketing", or a JSON
    # list of steps '[{"name": "bucketing", "s": 2}, "nnm"]' (flwr_byz.gars.preaggregation)
    pre: str = ""
    root_size: int = 100  # fltrust: the server's root data set, drawn from the training split
    num_byzantine: int = 0
    learning_rate: float = 0.1
    lr_schedule_r: float = 0.0
    num_rounds: int = 10
    eval_every: int = 1  # test-set evaluation after every k-th round (and the last one)
    fraction_train: float = 1.0
    device: str = "auto"  # the strategy's (server) device
    client_device: str = "cpu"  # where the ClientApps train: "cpu", "auto", "cuda", "cuda:1"...
    # node loss: a round goes on with the nodes still connected when at least ``min_nodes`` are
    # (0 = the rule's minimum n for num-byzantine); fewer for ``node_wait_timeout`` s fail the run
    min_nodes: int = 0
    node_wait_timeout: float = 120.0
    # a run in which the rule never aggregated (every round kept the model), or in which the
    # configured attack never ran, ends failed ("fail") or finishes with a warning ("warn")
    idle_run: str = "fail"
    # adversary
    byzantine_partitions: str = ""
    num_attackers: int | None = None
    attack: str = "none"
    attack_options: dict[str, Any] = field(default_factory=dict)
    coordinator_address: str = ""
    coordinator_timeout: float = 60.0
    # channel faults of the Phocas paper, applied where the server receives (an extension of
    # the shared schema: "none" | "bit_flip" | "gambler", options as JSON)
    channel_fault: str = "none"
    channel_fault_options: dict[str, Any] = field(default_factory=dict)
    # bookkeeping
    experiment: str = ""
    results_dir: str = "results"
    run_name: str = "run"
    client_state_dir: str = ""

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
        """Partition ids of the Byzantine clients."""
        if self.byzantine_partitions:
            return parse_partitions(self.byzantine_partitions)
        if self.attack == "none":
            return []
        return list(range(self.attackers))

    @property
    def run_dir(self) -> Path:
        """Directory holding this run's results and checkpoint."""
        return Path(self.results_dir) / self.run_name

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_flower(self) -> dict[str, bool | int | float | str]:
        """Flat Flower run config with dashed keys; dicts become JSON strings."""
        out: dict[str, bool | int | float | str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "num_attackers":
                value = self.attackers
            if isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            out[to_key(f.name)] = value
        return out

    def identity(self) -> dict[str, Any]:
        """The fields that define what is computed (not where results go or for how long)."""
        d = dataclasses.asdict(self)
        for name in (
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
        ):
            d.pop(name)
        d["num_attackers"] = self.attackers
        d.pop("eval_every")  # when the test set is evaluated does not change the training
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
        values = dataclasses.asdict(base) if base is not None else {}
        for key, value in run_config.items():
            name = to_attr(str(key))
            if name in _FIELD_TYPES:
                values[name] = value
        return from_mapping(values)


_FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_DICT_FIELDS = ("rule_options", "attack_options", "channel_fault_options")
_INT_FIELDS = (
    "seed",
    "num_clients",
    "batch_size",
    "local_epochs",
    "num_byzantine",
    "num_rounds",
    "min_nodes",
    "eval_every",
    "root_size",
)
_FLOAT_FIELDS = (
    "dirichlet_alpha",
    "similarity_gamma",
    "test_fraction",
    "local_lr",
    "momentum",
    "weight_decay",
    "clip_grad",
    "learning_rate",
    "lr_schedule_r",
    "fraction_train",
    "coordinator_timeout",
    "node_wait_timeout",
)
_STR_FIELDS = (
    "dataset",
    "data_root",
    "model",
    "init",
    "partitioning",
    "update_mode",
    "momentum_place",
    "rule",
    "pre",
    "device",
    "client_device",
    "idle_run",
    "byzantine_partitions",
    "attack",
    "coordinator_address",
    "channel_fault",
    "experiment",
    "results_dir",
    "run_name",
    "client_state_dir",
)


def to_key(name: str) -> str:
    """Field name to run-config key: ``num_byzantine`` -> ``num-byzantine``."""
    return name.replace("_", "-")


def to_attr(key: str) -> str:
    """Run-config key to field name: ``num-byzantine`` -> ``num_byzantine``."""
    return key.replace("-", "_")


def parse_partitions(text: str) -> list[int]:
    """Parse ``"0,3,5"`` into partition ids; clear error on junk."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError as err:
        raise ValueError(
            f"byzantine-partitions must be comma-separated integers, got {text!r}"
        ) from err


def _coerce(name: str, value: Any) -> Any:
    """Convert one field value to its type, or raise a ValueError naming the field."""
    key = to_key(name)
    if name in _DICT_FIELDS:
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"{key} must be a JSON object, got {value!r}: {err}") from err
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping (or a JSON object string), got {value!r}")
        return dict(value)
    if name == "num_attackers" and (
        value is None or value == "" or (isinstance(value, int) and value < 0)
    ):
        return None
    if name in _INT_FIELDS or name == "num_attackers":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as err:
            raise ValueError(f"{key} must be an integer, got {value!r}") from err
        if as_float != int(as_float):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(as_float)
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{key} must be a number, got {value!r}") from err
    if name in _STR_FIELDS:
        if isinstance(value, list | dict):
            raise ValueError(f"{key} must be a string, got {value!r}")
        if name == "byzantine_partitions" and isinstance(value, int):
            return str(value)
        return "" if value is None else str(value)
    raise ValueError(f"unknown field {key!r}")


def from_mapping(values: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from field values (underscore or dash keys), coercing types.

    Unknown fields raise a ValueError that lists the valid ones.
    """
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        name = to_attr(str(raw_key))
        if name not in _FIELD_TYPES:
            valid = ", ".join(sorted(to_key(n) for n in _FIELD_TYPES))
            raise ValueError(f"unknown field {raw_key!r}; valid fields: {valid}")
        kwargs[name] = _coerce(name, value)
    return RunConfig(**kwargs)


def _validate(cfg: RunConfig) -> None:
    """Check value ranges and choices; errors name the field."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    need(
        cfg.partitioning in PARTITIONINGS,
        f"partitioning must be one of {PARTITIONINGS}, got {cfg.partitioning!r}",
    )
    need(
        cfg.update_mode in UPDATE_MODES,
        f"update-mode must be one of {UPDATE_MODES}, got {cfg.update_mode!r}",
    )
    need(
        cfg.channel_fault in CHANNEL_FAULTS,
        f"channel-fault must be one of {CHANNEL_FAULTS}, got {cfg.channel_fault!r}",
    )
    need(
        cfg.momentum_place in MOMENTUM_PLACES,
        f"momentum-place must be one of {MOMENTUM_PLACES}, got {cfg.momentum_place!r}",
    )
    need(cfg.num_clients >= 1, f"num-clients must be >= 1, got {cfg.num_clients}")
    need(cfg.num_byzantine >= 0, f"num-byzantine must be >= 0, got {cfg.num_byzantine}")
    need(cfg.num_rounds >= 1, f"num-rounds must be >= 1, got {cfg.num_rounds}")
    need(cfg.eval_every >= 1, f"eval-every must be >= 1, got {cfg.eval_every}")
    need(cfg.init in INITS, f"init must be one of {INITS}, got {cfg.init!r}")
    need(cfg.idle_run in IDLE_RUN, f"idle-run must be one of {IDLE_RUN}, got {cfg.idle_run!r}")
    need(cfg.batch_size >= 1, f"batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.local_epochs >= 1, f"local-epochs must be >= 1, got {cfg.local_epochs}")
    need(0.0 <= cfg.momentum < 1.0, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(cfg.learning_rate > 0.0, f"learning-rate must be > 0, got {cfg.learning_rate}")
    need(cfg.lr_schedule_r >= 0.0, f"lr-schedule-r must be >= 0, got {cfg.lr_schedule_r}")
    need(cfg.weight_decay >= 0.0, f"weight-decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.clip_grad >= 0.0, f"clip-grad must be >= 0 (0 = off), got {cfg.clip_grad}")
    need(
        0.0 < cfg.fraction_train <= 1.0,
        f"fraction-train must be in (0, 1], got {cfg.fraction_train}",
    )
    need(0.0 < cfg.test_fraction < 1.0, f"test-fraction must be in (0, 1), got {cfg.test_fraction}")
    need(cfg.dirichlet_alpha > 0.0, f"dirichlet-alpha must be > 0, got {cfg.dirichlet_alpha}")
    need(
        0.0 <= cfg.similarity_gamma <= 1.0,
        f"similarity-gamma must be in [0, 1], got {cfg.similarity_gamma}",
    )
    need(
        cfg.coordinator_timeout > 0.0,
        f"coordinator-timeout must be > 0, got {cfg.coordinator_timeout}",
    )
    need(
        0 <= cfg.min_nodes <= cfg.num_clients,
        f"min-nodes must be in [0, num-clients={cfg.num_clients}] (0 = the rule's minimum), "
        f"got {cfg.min_nodes}",
    )
    need(
        cfg.node_wait_timeout > 0.0,
        f"node-wait-timeout must be > 0, got {cfg.node_wait_timeout}",
    )
    need(
        bool(re.fullmatch(r"[A-Za-z0-9._=,+-]+(/[A-Za-z0-9._=,+-]+)*", cfg.run_name))
        and ".." not in cfg.run_name.split("/"),
        f"run-name must be a relative path of letters, digits and ._=,+-, got {cfg.run_name!r}",
    )
    ids = cfg.byzantine_partition_ids
    need(
        all(0 <= i < cfg.num_clients for i in ids),
        f"byzantine-partitions must lie in [0, num-clients={cfg.num_clients}), got {ids}",
    )
    need(len(set(ids)) == len(ids), f"byzantine-partitions has duplicates: {ids}")
    need(
        0 <= cfg.attackers <= cfg.num_clients,
        f"num-attackers must be in [0, num-clients={cfg.num_clients}], got {cfg.attackers}",
    )
    need(
        cfg.num_byzantine < cfg.num_clients,
        f"num-byzantine must be < num-clients, got f={cfg.num_byzantine}, n={cfg.num_clients}",
    )


DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"


def option_names(fn: Any) -> tuple[str, ...]:
    """The keyword options of a rule function ``fn(vectors, f, **options)``: its parameters
    after the first two (the signature is where each option and its default is written)."""
    import inspect

    params = list(inspect.signature(fn).parameters.values())[2:]
    return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def _validate_registries(cfg: RunConfig) -> None:
    """Names and options against the registries, and n against the rule's requirement for f,
    so that a bad run fails when the config is read, not in round 1 (errors name the field)."""
    from flwr_byz import data, gars, models
    from flwr_byz.clients.malicious import MALICIOUS_CLIENTS

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    need(cfg.dataset in data.NAMES, f"dataset must be one of {data.NAMES}, got {cfg.dataset!r}")
    known_models = models.NAMES + models.BEYOND_NAMES
    need(cfg.model in known_models, f"model must be one of {known_models}, got {cfg.model!r}")
    for key, value in (("device", cfg.device), ("client-device", cfg.client_device)):
        need(
            re.fullmatch(DEVICE_PATTERN, value) is not None,
            f"{key} must be auto, cpu, cuda, cuda:<index> or mps, got {value!r}",
        )
    try:
        rule = gars.get(cfg.rule)
    except ValueError as err:
        raise ValueError(f"rule: {err}") from None
    allowed = option_names(rule.fn)
    unknown = sorted(set(cfg.rule_options) - set(allowed))
    need(
        not unknown,
        f"rule-options {unknown} are not options of rule {cfg.rule!r}; it takes "
        f"{list(allowed) or 'none'}",
    )
    sampled = max(1, round(cfg.fraction_train * cfg.num_clients))
    required = rule.min_n(cfg.num_byzantine, **cfg.rule_options)
    need(
        sampled >= required,
        f"rule {cfg.rule!r} with num-byzantine={cfg.num_byzantine} needs at least {required} "
        f"nodes per round, but num-clients={cfg.num_clients} x fraction-train="
        f"{cfg.fraction_train} gives {sampled}: every round would keep the model",
    )
    from flwr_byz.clients.config import pre_steps

    try:
        pre_steps(cfg.pre)
    except (ValueError, TypeError) as err:
        raise ValueError(f"pre: {err}") from None
    need(cfg.root_size >= 1, f"root-size must be >= 1, got {cfg.root_size}")
    if cfg.attack != "none":
        attacks = ("none", *MALICIOUS_CLIENTS)
        need(
            cfg.attack in MALICIOUS_CLIENTS, f"attack must be one of {attacks}, got {cfg.attack!r}"
        )
        takes = MALICIOUS_CLIENTS[cfg.attack].allowed_options
        unknown = sorted(set(cfg.attack_options) - takes)
        need(
            not unknown,
            f"attack-options {unknown} are not options of attack {cfg.attack!r}; it takes "
            f"{sorted(takes) or 'none'}",
        )


# ---------------------------------------------------------------------------------------
# Experiments and sweeps


@dataclass(frozen=True)
class Experiment:
    """A named experiment: its description and the flat list of runs of its sweep."""

    name: str
    description: str
    runs: tuple[RunConfig, ...]
    swept: tuple[str, ...]  # field names whose value differs between runs


def _check_fields(d: Mapping[str, Any], where: str) -> None:
    for key in d:
        name = to_attr(str(key))
        if name not in _FIELD_TYPES and key not in META_KEYS:
            valid = ", ".join(sorted(to_key(n) for n in _FIELD_TYPES))
            raise ValueError(f"{where}: unknown field {key!r}; valid fields: {valid}")


def expand_sweep(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list-valued fields; scalar fields are kept as they are.

    Returns one dict of field values per point, in a stable order (first listed field
    varies slowest). ``{"rule": ["krum", "median"], "seed": [1, 2]}`` gives 4 points.
    """
    keys = list(spec)
    choices: list[list[Any]] = []
    for key in keys:
        value = spec[key]
        if isinstance(value, list):
            if not value:
                raise ValueError(f"field {key!r} is an empty list: a sweep needs >= 1 value")
            choices.append(value)
        else:
            choices.append([value])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def expand_points(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """All sweep points of an experiment spec: base fields x each case (or the base alone)."""
    base = {k: v for k, v in spec.items() if k not in META_KEYS}
    cases = spec.get("cases")
    if cases is None:
        return expand_sweep(base)
    if not isinstance(cases, list) or not cases or not all(isinstance(c, Mapping) for c in cases):
        raise ValueError("cases must be a non-empty list of mappings of fields")
    points: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        _check_fields(case, f"cases[{i}]")
        merged = {**base, **case}
        points.extend(expand_sweep(merged))
    return points


def _label(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "none"
        return ",".join(f"{k}={_label(v)}" for k, v in sorted(value.items()))
    if value == "":
        return "none"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "", str(value)) or "x"


# Short labels and order of the fields in run names.
_NAME_ALIASES = {
    "num_byzantine": "f",
    "num_clients": "n",
    "momentum_place": "mom",
    "learning_rate": "lr",
    "attack_options": "aopt",
    "rule_options": "ropt",
}
_NAME_ORDER = (
    "rule",
    "attack",
    "num_byzantine",
    "num_clients",
    "momentum_place",
    "momentum",
    "learning_rate",
)


# Overridden fields that stay out of run names: where results and data go, for how long a run
# goes on (a longer run continues the shorter one), and devices.
_UNNAMED_OVERRIDES = (
    "num_rounds",
    "results_dir",
    "data_root",
    "device",
    "client_device",
    "idle_run",
    "node_wait_timeout",
    "coordinator_timeout",
    "client_state_dir",
    "experiment",
    "run_name",
)


def name_runs(
    points: list[dict[str, Any]], named: Collection[str] = ()
) -> tuple[list[str], tuple[str, ...]]:
    """Run names made of the fields that vary across points, e.g. ``rule=krum_attack=alie``,
    and of the fields in ``named`` (the command line's overrides) even when they do not vary.

    Option dicts enter a name only when needed to tell runs apart; ``seed`` comes last.
    """
    defaults = {f.name: getattr(RunConfig(), f.name) for f in dataclasses.fields(RunConfig)}
    canon = [{**defaults, **{to_attr(str(k)): v for k, v in p.items()}} for p in points]
    fields: list[str] = []
    for p in points:
        fields.extend(n for n in (to_attr(str(k)) for k in p) if n not in fields)

    def varies(n: str) -> bool:
        return len({json.dumps(c.get(n), sort_keys=True, default=str) for c in canon}) > 1

    swept = tuple(n for n in fields if varies(n))
    shown = swept + tuple(n for n in fields if n in named and n not in swept)
    ordered = [n for n in _NAME_ORDER if n in shown]
    ordered += [n for n in shown if n not in ordered and n != "seed" and n not in _DICT_FIELDS]
    ordered += [n for n in _DICT_FIELDS if n in shown and n not in swept]  # overridden options
    ordered += [n for n in ("seed",) if n in shown]

    def labels_for(names: list[str]) -> list[str]:
        return [
            "_".join(f"{_NAME_ALIASES.get(n, to_key(n))}={_label(c.get(n))}" for n in names)
            or "run"
            for c in canon
        ]

    labels = labels_for(ordered)
    for n in _DICT_FIELDS:
        if n in swept and len(set(labels)) < len(labels):
            ordered.insert(len(ordered) - (1 if "seed" in ordered else 0), n)
            labels = labels_for(ordered)
    seen: dict[str, int] = {}
    unique: list[str] = []
    for label in labels:
        count = seen.get(label, 0)
        seen[label] = count + 1
        unique.append(label if count == 0 else f"{label}_{count}")
    return unique, swept


def _distinct(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points in order, each once: overrides can make two cases the same run."""
    seen: set[str] = set()
    out = []
    for point in points:
        key = json.dumps(
            {to_attr(str(k)): v for k, v in point.items()}, sort_keys=True, default=str
        )
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


def load_spec(path_or_name: str | Path) -> tuple[str, dict[str, Any]]:
    """Read an experiment YAML by path, or by name from ``simulations/configs``."""
    path = Path(path_or_name)
    if not path.exists():
        candidate = CONFIG_DIR / f"{path_or_name}.yaml"
        if not candidate.exists():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise ValueError(
                f"no experiment file {str(path_or_name)!r}; known experiments: {known}"
            )
        path = candidate
    with path.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: an experiment file must be a mapping of fields")
    return path.stem, dict(spec)


def build_experiment(
    spec: Mapping[str, Any],
    name: str = "experiment",
    overrides: Mapping[str, Any] | None = None,
    results_dir: str | None = None,
    unnamed: Collection[str] = (),
) -> Experiment:
    """Validate a spec and expand it into typed runs.

    ``overrides`` (field -> value, applied over every point, e.g. ``num-rounds``) may
    themselves be lists to sweep. Each run's ``run_name`` is ``<experiment>/<label>``; the label
    names every overridden field (but those in ``unnamed`` and where results, data and devices
    are, and ``num-rounds``), so an override never reuses the runs of another setting.
    """
    spec = {
        k if k in META_KEYS else to_key(to_attr(str(k))): v
        for k, v in copy.deepcopy(dict(spec)).items()
    }
    _check_fields(spec, name)
    exp_name = str(spec.get("name", name))
    cases = spec.get("cases")
    if isinstance(cases, list):
        spec["cases"] = [
            {to_key(to_attr(str(k))): v for k, v in c.items()} if isinstance(c, Mapping) else c
            for c in cases
        ]
    if overrides:
        _check_fields(overrides, "overrides")
        for key, value in overrides.items():
            dashed = to_key(to_attr(str(key)))
            spec[dashed] = value
            for case in spec.get("cases") or []:
                if isinstance(case, dict):
                    case.pop(dashed, None)
    points = _distinct(expand_points(spec))
    skip = set(_UNNAMED_OVERRIDES) | {to_attr(str(k)) for k in unnamed}
    named = [n for n in (to_attr(str(k)) for k in overrides or {}) if n not in skip]
    labels, swept = name_runs(points, named)
    runs = []
    for point, label in zip(points, labels, strict=True):
        values = {to_attr(str(k)): v for k, v in point.items()}
        values["experiment"] = exp_name
        values["run_name"] = f"{exp_name}/{label}"
        if results_dir is not None:
            values["results_dir"] = results_dir
        try:
            runs.append(from_mapping(values))
        except ValueError as err:
            raise ValueError(f"experiment {exp_name!r}, run {label!r}: {err}") from err
    return Experiment(
        name=exp_name, description=str(spec.get("description", "")), runs=tuple(runs), swept=swept
    )


def load_experiment(
    path_or_name: str | Path,
    overrides: Mapping[str, Any] | None = None,
    results_dir: str | None = None,
    unnamed: Collection[str] = (),
) -> Experiment:
    """Load, validate and expand an experiment YAML (path or name in ``configs/``)."""
    name, spec = load_spec(path_or_name)
    try:
        return build_experiment(
            spec, name=name, overrides=overrides, results_dir=results_dir, unnamed=unnamed
        )
    except ValueError as err:
        raise ValueError(f"{path_or_name}: {err}") from err
