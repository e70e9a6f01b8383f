"""Bad run configs fail when they are read, naming the field (issue 11's reproduced bugs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwr_byz.schema import ClientConfig, RunConfig, from_mapping
from flwr_byz.simulations.experiment import build_experiment, load_experiment


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rule": "krumm"}, "unknown aggregation rule 'krumm'"),
        ({"attack": "alie2", "num-byzantine": 1}, "attack must be one of"),
        ({"dataset": "mnist6k"}, "dataset must be one of"),
        ({"model": "resnet"}, "model must be one of"),
        ({"rule": "krum", "rule-options": {"m": 3}}, r"rule-options \['m'\] are not options"),
        ({"rule": "median", "rule-options": {"b": 1}}, r"rule-options \['b'\]"),
        ({"attack": "ipm", "num-byzantine": 1, "attack-options": {"z": 1}}, "attack-options"),
        ({"rule": "krum", "num-byzantine": 4}, "needs at least 11 nodes per round"),
        ({"rule": "trimmed_mean", "rule-options": {"b": 5}}, "needs at least 11 nodes"),
        ({"rule": "median", "num-byzantine": 3, "fraction-train": 0.5}, "gives 5"),
        ({"client-device": "gpu"}, "client-device must be"),
    ],
)
def test_bad_fields_fail_at_the_edge(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_mapping({"num-clients": 10, **fields})


def test_the_rules_own_options_pass() -> None:
    cfg = from_mapping(
        {"num-clients": 10, "num-byzantine": 2, "rule": "multi_krum", "rule-options": {"m": 3}}
    )
    assert cfg.rule_options == {"m": 3}
    cfg = from_mapping({"num-clients": 10, "rule": "krum", "rule-options": {"distance": "plain"}})
    assert cfg.rule_options == {"distance": "plain"}


def test_a_sweep_with_a_shared_option_fails_before_any_run(tmp_path: Path) -> None:
    spec = {
        "num-clients": 11,
        "num-byzantine": 2,
        "rule": ["multi_krum", "krum"],
        "rule-options": {"m": 3},
        "results-dir": str(tmp_path),
    }
    with pytest.raises(ValueError, match=r"experiment 'sweep', run .*krum.*rule-options \['m'\]"):
        build_experiment(spec, name="sweep")
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_a_yaml_with_a_bad_field_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("num-clients: 10\nrule: [median, krumm]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml.*krumm"):
        load_experiment(path)


def test_client_device_from_yaml_reaches_the_client_config() -> None:
    cfg = from_mapping({"num-clients": 4, "client-device": "auto"})
    flat = cfg.to_flower()
    assert flat["client-device"] == "auto"
    node = ClientConfig.from_configs(flat, {"partition-id": 0, "num-partitions": 4})
    assert node.client_device == "auto"
    # where the clients compute is not part of what is computed (resume keeps the run)
    assert cfg.identity() == RunConfig(num_clients=4).identity()


def test_the_flower_app_config_declares_every_run_config_field() -> None:
    """Flower passes only the keys declared in pyproject's [tool.flwr.app.config]."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    fields = set(RunConfig().to_flower())
    assert fields <= set(declared), f"undeclared: {sorted(fields - set(declared))}"
    assert set(declared) - fields == {"run-index"}
    RunConfig.from_flower(declared)  # the declared values are a valid run


def test_overridden_fields_name_the_runs_and_equal_points_run_once() -> None:
    spec = {
        "num-clients": 10,
        "num-byzantine": 2,
        "cases": [
            {"rule": "average", "attack": "none"},
            {"rule": "median", "attack": "gaussian"},
            {"rule": "krum", "attack": "alie"},
        ],
    }
    plain = build_experiment(spec, name="e")
    assert [r.run_name for r in plain.runs] == [
        "e/rule=average_attack=none",
        "e/rule=median_attack=gaussian",
        "e/rule=krum_attack=alie",
    ]
    both = build_experiment(spec, name="e", overrides={"rule": "median", "attack": "gaussian"})
    assert [r.run_name for r in both.runs] == ["e/rule=median_attack=gaussian"]  # one run
    lr = build_experiment(spec, name="e", overrides={"learning-rate": 0.3, "num-rounds": 5})
    assert lr.runs[0].run_name == "e/rule=average_attack=none_lr=0.3"  # rounds stay unnamed
    quick = build_experiment(spec, name="e", overrides={"seed": 4}, unnamed=["seed"])
    assert quick.runs[0].run_name == "e/rule=average_attack=none"


def test_partition_schemes_are_the_data_modules() -> None:
    from flwr_byz import data
    from flwr_byz.schema import PARTITIONINGS

    assert set(PARTITIONINGS) == set(data.SCHEMES)
    with pytest.raises(ValueError, match="similarity-gamma must be in"):
        from_mapping({"num-clients": 4, "partitioning": "gamma_similarity", "similarity-gamma": 2})
