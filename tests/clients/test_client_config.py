"""Run/node config parsing into ClientConfig (Flower config values are bool/int/float/str)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flwr_byz.schema import ClientConfig, parse_partitions

NODE = {"partition-id": 2, "num-partitions": 6}


def test_defaults_and_types() -> None:
    run = {"rule": "multi_krum", "rule-options": '{"m": 3}', "momentum": 0.9}
    cfg = ClientConfig.from_configs(run, NODE)
    assert cfg.batch_size == 83 and cfg.update_mode == "gradient" and cfg.rule_options == {"m": 3}
    assert cfg.worker_momentum and not cfg.is_byzantine and cfg.attacker_rank == -1


def test_byzantine_partitions_default_to_the_first_num_attackers() -> None:
    cfg = ClientConfig.from_configs({"attack": "ipm", "num-byzantine": 3}, NODE)
    assert cfg.byzantine_partition_ids == [0, 1, 2] and cfg.is_byzantine and cfg.attacker_rank == 2
    cfg = ClientConfig.from_configs({"attack": "ipm", "num-byzantine": 3, "num-attackers": 1}, NODE)
    assert cfg.byzantine_partition_ids == [0] and not cfg.is_byzantine
    cfg = ClientConfig.from_configs({"attack": "ipm", "byzantine-partitions": "5, 2"}, NODE)
    assert cfg.byzantine_partition_ids == [2, 5] and cfg.attacker_rank == 0 and cfg.num_honest == 4
    cfg = ClientConfig.from_configs({"attack": "none", "byzantine-partitions": "2"}, NODE)
    assert not cfg.is_byzantine  # no attack: everybody is honest


@pytest.mark.parametrize(
    ("run_config", "message"),
    [
        ({"attack": "nope"}, "unknown attack"),
        ({"attack-options": "{bad"}, "attack-options"),
        ({"batch-size": "many"}, "batch-size"),
        ({"update-mode": "deltas"}, "update-mode"),
        ({"byzantine-partitions": "1,x"}, "byzantine-partitions"),
        ({"byzantine-partitions": "9"}, "num-partitions"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_clear_errors(run_config, message) -> None:
    with pytest.raises(ValueError, match=message):
        ClientConfig.from_configs(run_config, NODE)


def test_node_config_is_required() -> None:
    with pytest.raises(ValueError, match="partition-id"):
        ClientConfig.from_configs({}, {})


@given(st.sets(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_partition_list_round_trips(ids) -> None:
    text = ",".join(str(i) for i in sorted(ids, reverse=True))
    assert parse_partitions(text) == sorted(ids)
