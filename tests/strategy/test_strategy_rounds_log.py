"""The ServerApp's ``rounds.jsonl`` names the excluded nodes and why (not only their count)."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import MessageType

from flwr_byz.inprocess import InProcessGrid
from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines, server_app
from flwr_byz.simulations.results import RunStore


class _LosingGrid(InProcessGrid):
    """Loses the train replies of one node (a timeout in a deployment)."""

    def __init__(self, *args, lose: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lose = lose

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        return [
            r
            for r in replies
            if not (
                r.metadata.src_node_id == self.lose
                and r.metadata.message_type.split(".")[0] == MessageType.TRAIN
            )
        ]


def test_rounds_jsonl_lists_excluded_nodes_and_reasons(tmp_path: Path) -> None:
    cfg = RunConfig(
        num_clients=5,
        num_byzantine=1,
        rule="median",
        attack="none",
        batch_size=16,
        learning_rate=0.1,
        num_rounds=2,
        seed=3,
        results_dir=str(tmp_path),
        run_name="log/run",
    )
    grid = _LosingGrid(engines.client_app(), engines.node_configs(cfg), cfg.to_flower(), lose=2)
    server_app.run_server(grid, cfg)
    rows = [
        json.loads(line) for line in (Path(cfg.run_dir) / "rounds.jsonl").read_text().splitlines()
    ]
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["excluded"] == 1 and row["excluded-nodes"] == [2]
        assert len(row["excluded-reasons"]) == 1 and "no reply" in row["excluded-reasons"][0]
        assert row["faulty-nodes"] == [] and row["effective-f"] == 1
    assert RunStore(cfg.run_dir).read_rounds()[1]["excluded-nodes"] == [2]
