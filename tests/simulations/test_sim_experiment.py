"""Experiment YAML: sweep expansion, run naming, validation errors, run-config round trip."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz.schema import RunConfig, from_mapping
from flwr_byz.simulations.experiment import (
    CONFIG_DIR,
    build_experiment,
    expand_sweep,
    load_experiment,
)
from flwr_byz.simulations.server_app import config_from_context

BUNDLED = ("quickstart", "alie_table1", "momentum_mnist", "bulyan_lp", "phocas")


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.one_of(
            st.integers(0, 9),
            st.lists(st.integers(0, 9), min_size=1, max_size=3),
        ),
        min_size=1,
    )
)
def test_expand_sweep_is_the_cartesian_product(spec: dict) -> None:
    points = expand_sweep(spec)
    lists = {k: v if isinstance(v, list) else [v] for k, v in spec.items()}
    assert len(points) == math.prod(len(v) for v in lists.values())
    expected = [
        dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())
    ]
    assert points == expected  # every combination once, first field slowest


def test_cases_are_unions_of_sweeps() -> None:
    spec = {
        "num-clients": 7,
        "num-byzantine": 1,
        "seed": [1, 2],
        "cases": [
            {"attack": "none", "rule": "average"},
            {"attack": "sign_flip", "rule": ["median", "krum"]},
        ],
    }
    exp = build_experiment(spec, name="t")
    combos = sorted((r.attack, r.rule, r.seed) for r in exp.runs)
    assert combos == sorted(
        [("none", "average", s) for s in (1, 2)]
        + [("sign_flip", rule, s) for rule in ("median", "krum") for s in (1, 2)]
    )
    names = [r.run_name for r in exp.runs]
    assert len(set(names)) == len(names)
    assert all(n.startswith("t/") for n in names)
    assert "t/rule=krum_attack=sign_flip_seed=2" in names


def test_overrides_replace_base_and_case_values() -> None:
    spec = {"num-clients": 7, "num-rounds": 50, "cases": [{"rule": "median", "num-rounds": 9}]}
    exp = build_experiment(spec, name="t", overrides={"num-rounds": 3, "rule": ["krum", "median"]})
    assert [r.num_rounds for r in exp.runs] == [3, 3]
    assert sorted(r.rule for r in exp.runs) == ["krum", "median"]


def test_option_dicts_name_runs_only_when_needed() -> None:
    spec = {"num-clients": 7, "attack": "alie", "attack-options": [{"z": 1.0}, {"z": 2.0}]}
    exp = build_experiment(spec, name="t")
    assert [r.run_name for r in exp.runs] == ["t/aopt=z=1.0", "t/aopt=z=2.0"]
    assert [r.attack_options for r in exp.runs] == [{"z": 1.0}, {"z": 2.0}]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"rulez": "krum"}, "rulez"),
        ({"num-clients": "many"}, "num-clients"),
        ({"num-clients": 2.5}, "num-clients"),
        ({"learning-rate": -1.0}, "learning-rate"),
        ({"learning-rate": True}, "learning-rate"),
        ({"partitioning": "random"}, "partitioning"),
        ({"momentum-place": "client"}, "momentum-place"),
        ({"momentum": 1.5}, "momentum"),
        ({"rule-options": "{not json"}, "rule-options"),
        ({"attack-options": [1, 2]}, "attack-options"),
        ({"seed": []}, "seed"),
        ({"num-clients": 5, "num-byzantine": 5}, "num-byzantine"),
        ({"num-clients": 5, "byzantine-partitions": "0,7"}, "byzantine-partitions"),
        ({"num-clients": 5, "byzantine-partitions": "0,x"}, "byzantine-partitions"),
        ({"channel-fault": "cosmic_ray"}, "channel-fault"),
        ({"cases": [{"rule": "krum", "colour": 1}]}, "colour"),
        ({"cases": "krum"}, "cases"),
    ],
)
def test_validation_errors_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_experiment(spec, name="bad")


def test_yaml_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("rule: krum\nbatch-size: zero\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.yaml.*batch-size"):
        load_experiment(path)
    with pytest.raises(ValueError, match="known experiments"):
        load_experiment("no_such_experiment")
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_experiment(path)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_experiments_expand_and_validate(name: str) -> None:
    exp = load_experiment(name)
    assert exp.name == name and exp.runs
    assert len({r.run_name for r in exp.runs}) == len(exp.runs)
    with (CONFIG_DIR / f"{name}.yaml").open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    assert raw["name"] == name
    for run in exp.runs:
        # every run is a valid (n, f) for its rule
        from flwr_byz import gars

        assert run.num_clients >= gars.get(run.rule).min_n(run.num_byzantine, **run.rule_options)


def test_paper_settings_in_bundled_configs() -> None:
    alie = load_experiment("alie_table1")
    assert {(r.num_clients, r.num_byzantine) for r in alie.runs} == {(51, 12)}
    assert {r.rule for r in alie.runs if r.attack == "alie"} == {
        "average",
        "trimmed_mean",
        "krum",
        "bulyan",
    }
    assert all(r.attack_options.get("z") == 1.5 for r in alie.runs if r.attack == "alie")
    phocas = load_experiment("phocas")
    assert {(r.num_clients, r.num_byzantine, r.model) for r in phocas.runs} == {(20, 6, "mlp128")}
    bulyan = load_experiment("bulyan_lp")
    assert {(r.num_clients, r.num_byzantine) for r in bulyan.runs} == {(39, 9)}


@settings(max_examples=40, deadline=None)
@given(
    rule=st.sampled_from(["average", "krum", "median"]),
    n=st.integers(5, 60),
    lr=st.floats(1e-4, 10.0, allow_nan=False),
    options=st.dictionaries(st.just("z"), st.floats(-5, 5, allow_nan=False)),
    partitions=st.lists(st.integers(0, 4), unique=True, max_size=3),
)
def test_flower_run_config_round_trip(rule, n, lr, options, partitions) -> None:
    cfg = RunConfig(
        rule=rule,
        num_clients=n,
        learning_rate=lr,
        attack="alie",
        attack_options=options,
        byzantine_partitions=",".join(map(str, partitions)),
    )
    flat = cfg.to_flower()
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert json.loads(flat["attack-options"]) == options
    back = RunConfig.from_flower(flat)
    assert back.identity() == cfg.identity()
    assert back.attackers == (len(partitions) if partitions else cfg.num_byzantine)


def test_num_attackers_defaults_to_num_byzantine() -> None:
    cfg = from_mapping({"num-clients": 9, "num-byzantine": 3, "attack": "alie"})
    assert cfg.attackers == 3 and cfg.byzantine_partition_ids == [0, 1, 2]
    assert cfg.to_flower()["num-attackers"] == 3
    assert from_mapping({"num-clients": 9, "num-byzantine": 3}).byzantine_partition_ids == []


def test_server_config_from_experiment_name_and_overrides() -> None:
    base = load_experiment("quickstart").runs[2]
    cfg = config_from_context({"experiment": "quickstart", "run-index": 2, "num-rounds": 4})
    assert cfg.rule == base.rule and cfg.attack == base.attack
    assert cfg.num_rounds == 4
    with pytest.raises(ValueError, match="run-index"):
        config_from_context({"experiment": "quickstart", "run-index": 99})
