"""A dead colluding coordinator stops only the attack: honest training goes on, attackers fail
loudly, and the run's result says that the attack did not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from client_helpers import make_grid, train_messages
from flwr.app import ArrayRecord

import flwr_byz.clients.app as client_app
from flwr_byz import models
from flwr_byz.clients.coordinator import start_coordinator
from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.server_app import IdleRunError, idle_run_problem, run_summary


def dead_address() -> str:
    """The address of a coordinator that was started and stopped: nothing listens there."""
    handle = start_coordinator("127.0.0.1:0")
    handle.stop()
    return handle.address


@pytest.fixture(autouse=True)
def _fresh_warnings():
    client_app._EAVESDROP_WARNED.clear()
    yield
    client_app._EAVESDROP_WARNED.clear()


def test_honest_clients_train_and_attackers_fail_loudly(caplog: pytest.LogCaptureFixture) -> None:
    address = dead_address()
    config = {
        "attack": "alie",
        "num-byzantine": 1,
        "byzantine-partitions": "3",
        "coordinator-address": address,
        "coordinator-timeout": 5.0,
    }
    grid = make_grid(4, config)
    arrays = ArrayRecord(models.build("mlp", seed=0).state_dict())
    for rnd in (1, 2):
        replies = grid.send_and_receive(train_messages(grid.get_node_ids(), arrays, rnd))
        by_node = {int(r.metadata.src_node_id): r for r in replies}
        for node in (1, 2, 3):  # partitions 0..2: honest, their vectors are sent
            assert not by_node[node].has_error(), by_node[node].error.reason
            assert "arrays" in by_node[node].content.array_records
        attacker = by_node[4]
        assert attacker.has_error()
        assert attacker.error.reason.startswith(client_app.ATTACK_FAILED_PREFIX)
        assert "'alie'" in attacker.error.reason and address in attacker.error.reason
    warnings = [r for r in caplog.records if "cannot publish to the colluding" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per process


def test_run_with_dead_coordinator_trains_and_reports_no_attack(tmp_path: Path) -> None:
    cfg = RunConfig(
        num_clients=4,
        rule="median",
        num_byzantine=1,
        byzantine_partitions="3",
        attack="alie",
        coordinator_address=dead_address(),
        coordinator_timeout=5.0,
        learning_rate=0.5,
        num_rounds=3,
        seed=2,
        device="cpu",
        results_dir=str(tmp_path),
        run_name="dead-coordinator",
    )
    with pytest.raises(IdleRunError, match="attack 'alie' never ran"):
        engines.run(cfg)  # a run whose attack never ran does not say it completed
    result = json.loads((cfg.run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "never ran" in result["error"]
    assert result["attack-ran"] is False and result["attack-rounds"] == 0
    accepted = cfg.replace(idle_run="warn", run_name="dead-coordinator-warn")
    assert engines.run(accepted).status == "finished"  # the user opted out
    rounds = [r for r in result["rounds"] if r["round"] >= 1]
    for metrics in rounds:
        assert metrics["attackers-sampled"] == 1 and metrics["attack-replies"] == 0, metrics
        assert metrics.get("kept-model", 0.0) == 0.0, metrics  # the honest replies were used
    accuracies = [r["test-accuracy"] for r in result["rounds"]]
    assert len(set(accuracies)) == len(accuracies), accuracies  # the model moved every round


def test_run_summary_counts_rounds_with_usable_attack_vectors() -> None:
    cfg = RunConfig(num_clients=4, num_byzantine=1, attack="alie")
    rounds = [{"round": 0}, {"round": 1, "attack-replies": 0}, {"round": 2, "attack-replies": 1}]
    assert run_summary(cfg, rounds) == {
        "lost-partitions": [],
        "attack-rounds": 1,
        "attack-ran": True,
    }
    assert "attack-ran" not in run_summary(cfg.replace(attack="none", num_byzantine=0), rounds)


def test_idle_run_problem_names_what_never_happened() -> None:
    cfg = RunConfig(num_clients=4, num_byzantine=1, attack="alie")
    kept = [
        {"round": 0},
        {"round": 1, "kept-model": 1.0, "kept-reason": "2 usable replies, median needs 3"},
        {"round": 2, "kept-model": 1.0, "kept-reason": "2 usable replies, median needs 3"},
    ]
    problem = idle_run_problem(cfg, kept, run_summary(cfg, kept))
    assert problem is not None and "never aggregated: all 2 rounds" in problem
    assert "median needs 3" in problem
    moved = [
        {"round": 1, "kept-model": 1.0, "attack-replies": 1},
        {"round": 2, "attack-replies": 1},
    ]
    assert idle_run_problem(cfg, moved, run_summary(cfg, moved)) is None
    silent = [{"round": 1, "attack-replies": 0}]
    assert "never ran" in str(idle_run_problem(cfg, silent, run_summary(cfg, silent)))
    clean = cfg.replace(attack="none", num_byzantine=0)
    assert idle_run_problem(clean, silent, run_summary(clean, silent)) is None
