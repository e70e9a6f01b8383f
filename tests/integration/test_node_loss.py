"""A lost node never hangs a run: the rounds go on without it (a dropout) while at least
``min-nodes`` stay connected; fewer for ``node-wait-timeout`` s fail the run with a clear error.

In process (a grid that loses nodes mid-run) and on a real deployment (one SuperNode killed
with SIGKILL after round 1).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from flwr_byz.inprocess import InProcessGrid
from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.server_app import NodeWaitGrid, TooFewNodesError, min_nodes, run_server

from .harness import Federation, descendants
from .test_deployment import NO_ATTACK, byzantine_run_config, project_app


class LosingGrid(InProcessGrid):
    """An in-process grid whose nodes ``lose`` die while round ``at_round`` runs: from then on
    they are not listed and a message to them gets an error reply."""

    def __init__(self, *args: Any, lose: set[int], at_round: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lose, self.at_round = lose, at_round
        self.dead: set[int] = set()

    def get_node_ids(self) -> list[int]:
        return [node for node in super().get_node_ids() if node not in self.dead]

    def _deliver(self, message: Message) -> Message:
        config = message.content.config_records.get("config") if message.has_content() else None
        if config is not None and int(config.get("server-round", 0)) == self.at_round:
            self.dead |= self.lose
        if message.metadata.dst_node_id in self.dead:
            return self._error_reply(message, 5, "node unavailable (test)")
        return super()._deliver(message)


def small_run(tmp_path: Path, **changes: Any) -> RunConfig:
    base = RunConfig(
        num_clients=5,
        rule="median",
        num_byzantine=1,
        learning_rate=0.5,
        num_rounds=4,
        seed=1,
        device="cpu",
        results_dir=str(tmp_path),
        run_name="node-loss",
    )
    return base.replace(**changes)


def losing_grid(cfg: RunConfig, lose: set[int], at_round: int) -> LosingGrid:
    return LosingGrid(
        engines.client_app(),
        engines.node_configs(cfg),
        cfg.to_flower(),
        lose=lose,
        at_round=at_round,
    )


def test_min_nodes_defaults_to_the_rules_minimum() -> None:
    assert min_nodes(RunConfig(num_clients=10, rule="krum", num_byzantine=2)) == 7  # 2f + 3
    assert min_nodes(RunConfig(num_clients=5, rule="median", num_byzantine=1)) == 3  # 2f + 1
    assert min_nodes(RunConfig(num_clients=5, rule="krum", num_byzantine=1, min_nodes=2)) == 2
    with pytest.raises(ValueError, match="min-nodes must be in"):
        RunConfig(num_clients=5, min_nodes=6)
    cfg = RunConfig.from_flower({"min-nodes": 4, "node-wait-timeout": 7, "num-clients": 5})
    assert (cfg.min_nodes, cfg.node_wait_timeout) == (4, 7.0)


def test_node_wait_grid_fails_after_the_timeout() -> None:
    grid = InProcessGrid(engines.client_app(), [{}] * 3, run_config={})
    assert list(NodeWaitGrid(grid, 3, timeout=0.01).get_node_ids()) == [1, 2, 3]
    guard = NodeWaitGrid(grid, 4, timeout=0.05)
    assert len(list(guard.get_node_ids())) == 3  # the wait starts
    time.sleep(0.06)
    with pytest.raises(TooFewNodesError, match="only 3 nodes connected .* min-nodes=4 needed"):
        guard.get_node_ids()


def test_lost_node_is_a_dropout_and_the_run_finishes(tmp_path: Path) -> None:
    cfg = small_run(tmp_path)
    run_server(losing_grid(cfg, lose={5}, at_round=2), cfg)  # hung in round 3 before
    result = json.loads((cfg.run_dir / "result.json").read_text())
    assert result["status"] == "finished" and result["completed-rounds"] == 4
    assert result["lost-partitions"] == [4]
    rows = [json.loads(line) for line in (cfg.run_dir / "rounds.jsonl").read_text().splitlines()]
    by_round = {row["round"]: row for row in rows}
    assert by_round[1]["connected-nodes"] == 5 and by_round[1]["lost-partitions"] == []
    for t in (2, 3, 4):
        assert by_round[t]["connected-nodes"] == 4 and by_round[t]["lost-partitions"] == [4]
    assert by_round[4]["test-accuracy"] > by_round[0]["test-accuracy"]


def test_too_few_nodes_past_the_timeout_fail_the_run(tmp_path: Path) -> None:
    cfg = small_run(tmp_path, min_nodes=4, node_wait_timeout=0.5)
    with pytest.raises(TooFewNodesError, match="only 3 nodes connected .* min-nodes=4 needed"):
        run_server(losing_grid(cfg, lose={4, 5}, at_round=2), cfg)
    result = json.loads((cfg.run_dir / "result.json").read_text())
    assert result["status"] == "failed" and result["completed-rounds"] == 2
    assert "round 3: only 3 nodes connected" in result["error"]


@pytest.mark.integration
def test_killed_supernode_does_not_hang_the_deployment(federation_factory, tmp_path: Path) -> None:
    """4 SuperNodes, median (min-nodes 3 by default); partition 3 is killed after round 1."""
    federation: Federation = federation_factory()
    num_nodes, rounds = 4, 3
    results = tmp_path / "results"
    run_config = byzantine_run_config(
        num_nodes, rounds, results, **NO_ATTACK, **{"run-name": "node-loss"}
    )
    federation.start_superlink()
    for partition_id in range(num_nodes):
        federation.start_supernode(partition_id, num_nodes)
    federation.wait_for_supernodes()
    run_id = federation.run(project_app(tmp_path / "app", run_config), run_config)
    rounds_file = results / "node-loss" / "rounds.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if rounds_file.exists() and len(rounds_file.read_text().splitlines()) >= 2:
            break  # round 0 (initial model) and round 1 are written
        time.sleep(0.2)
    else:
        raise AssertionError(f"round 1 never ended\n{federation.harness.dump_logs()}")
    victim = federation.supernodes[num_nodes - 1]
    for ident in [*descendants(victim.pid), victim.ident]:  # the node's machine crashes
        os.kill(ident.pid, signal.SIGKILL)
    status = federation.wait_for_run(run_id, timeout=300)
    log = federation.run_log(run_id)
    assert status == "finished:completed", f"{status}\n{log}"
    result = json.loads((results / "node-loss" / "result.json").read_text())
    assert result["status"] == "finished" and result["completed-rounds"] == rounds
    assert result["lost-partitions"] == [num_nodes - 1], result
    last = result["rounds"][-1]
    assert last["connected-nodes"] == num_nodes - 1 and last["lost-partitions"] == [3], last
    assert "(partition 3) is gone, counted as a dropout" in log
