"""The one run-config schema: Flower-free, coerced from its annotations, the node view derived
from it, and the documentation's table kept equal to it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flwr_byz.schema import GROUPS, ClientConfig, RunConfig, fields_table, from_mapping

ROOT = Path(__file__).resolve().parents[1]


def test_the_schema_imports_no_flower() -> None:
    code = (
        "import sys, flwr_byz.schema as s; s.RunConfig(rule='krum', num_byzantine=1); "
        "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_field_has_a_group_and_a_meaning() -> None:
    for f in dataclasses.fields(RunConfig):
        assert f.metadata["group"] in GROUPS, f.name
        assert f.metadata["doc"].strip(), f.name


def test_the_documentation_table_is_the_schema() -> None:
    text = (ROOT / "docs" / "simulations.md").read_text(encoding="utf-8")
    inside = text.split("<!-- schema-table: begin -->\n")[1].split("\n<!-- schema-table: end -->")
    assert inside[0] == fields_table()


def test_the_flower_app_config_is_a_valid_run_of_the_schema() -> None:
    """pyproject's [tool.flwr.app.config] declares exactly the schema's keys (and run-index)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    assert set(declared) - {"run-index"} == set(RunConfig().to_flower())
    parsed = RunConfig.from_flower(declared)
    for key, value in parsed.to_flower().items():
        assert declared[key] == value, key


@pytest.mark.parametrize(
    ("key", "raw", "typed"),
    [
        ("num-clients", "12", 12),
        ("num-clients", 12.0, 12),
        ("learning-rate", "0.25", 0.25),
        ("rule-options", '{"distance": "plain"}', {"distance": "plain"}),
        ("num-attackers", "", None),
        ("num-attackers", -1, None),
        ("byzantine-partitions", 3, "3"),
    ],
)
def test_values_are_coerced_from_the_annotations(key: str, raw: object, typed: object) -> None:
    base = {"rule": "krum", "num-clients": 13} if key == "rule-options" else {}
    cfg = from_mapping({**base, key: raw})
    assert getattr(cfg, key.replace("-", "_")) == typed


@pytest.mark.parametrize(
    ("key", "raw"),
    [("num-clients", "2.5"), ("num-clients", True), ("learning-rate", "fast"), ("rule", ["a"])],
)
def test_a_bad_type_names_the_key(key: str, raw: object) -> None:
    with pytest.raises(ValueError, match=key):
        from_mapping({key: raw})


def test_the_node_view_is_the_run_plus_the_node() -> None:
    run = from_mapping(
        {
            "num-clients": 7,
            "num-byzantine": 2,
            "rule": "median",
            "attack": "ipm",
            "byzantine-partitions": "5,1",
            "client-device": "cpu",
            "learning-rate": 0.3,
        }
    )
    node = ClientConfig.from_configs(run.to_flower(), {"partition-id": 5, "num-partitions": 7})
    assert node.run.to_flower() == run.to_flower()  # every field of the run, defaults the same
    assert node.is_byzantine and node.attacker_rank == 1 and node.num_honest == 5
    honest = ClientConfig.from_configs(run.to_flower(), {"partition-id": 0, "num-partitions": 7})
    assert not honest.is_byzantine and honest.attacker_rank == -1


def test_the_node_count_stands_in_for_an_absent_num_clients() -> None:
    node = ClientConfig.from_configs(
        {"attack": "ipm", "num-byzantine": 14},
        {
            "partition-id": 0,
            "num-partitions": 30,
        },
    )
    assert node.num_clients == 30 and node.attackers == 14


def test_a_node_outside_the_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="partition-id"):
        ClientConfig.from_configs({}, {"partition-id": 4, "num-partitions": 4})
