"""Experiments: YAML files and their sweeps over the run-config schema (:mod:`flwr_byz.schema`).

An experiment YAML holds the fields of :class:`~flwr_byz.schema.RunConfig` (written with dashes,
as in the Flower run config: ``num-byzantine``, ``rule-options``...). A list in any field is a sweep
over that field, and the runs are the cartesian product of all lists. A ``cases`` list of
partial configs, each merged over the base fields and expanded the same way, gives unions
of sweeps (e.g. "no attack with average" next to "ALIE against four rules"). Every run
is validated when the file is read, so a bad field fails the sweep before its first run.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flwr_byz.schema import DICT_FIELDS, FIELD_TYPES, RunConfig, from_mapping, to_attr, to_key

CONFIG_DIR = Path(__file__).parent / "configs"

# Keys of an experiment YAML that are not run-config fields.
META_KEYS = ("name", "description", "cases", "paper", "engine")


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
        if name not in FIELD_TYPES and key not in META_KEYS:
            valid = ", ".join(sorted(to_key(n) for n in FIELD_TYPES))
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
    ordered += [n for n in shown if n not in ordered and n != "seed" and n not in DICT_FIELDS]
    ordered += [n for n in DICT_FIELDS if n in shown and n not in swept]  # overridden options
    ordered += [n for n in ("seed",) if n in shown]

    def labels_for(names: list[str]) -> list[str]:
        return [
            "_".join(f"{_NAME_ALIASES.get(n, to_key(n))}={_label(c.get(n))}" for n in names)
            or "run"
            for c in canon
        ]

    labels = labels_for(ordered)
    for n in DICT_FIELDS:
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
