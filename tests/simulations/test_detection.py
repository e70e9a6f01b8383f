"""Detection precision and recall of rules that leave inputs out (ALGORITHMS.md, metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwr_byz.metrics import detection_rates
from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines


def test_detection_rates_by_hand() -> None:
    # 6 inputs, 2 Byzantine (5, 6); the rule kept 1, 2, 5: it left out 3, 4, 6
    rates = detection_rates([1, 2, 3, 4, 5, 6], [1, 2, 5], [5, 6])
    assert rates == {"detection-precision": pytest.approx(1 / 3), "detection-recall": 0.5}
    assert detection_rates([1, 2], [1, 2], [2]) == {"detection-recall": 0.0}  # none left out
    assert detection_rates([1, 2], [1], []) == {"detection-precision": 0.0}  # no attacker seen
    assert detection_rates([1, 2], [1], [9]) == {"detection-precision": 0.0}  # 9 not considered


def test_krum_run_reports_detection_each_round(tmp_path: Path) -> None:
    cfg = RunConfig(
        num_clients=7,
        num_byzantine=2,
        rule="krum",
        attack="gaussian",
        attack_options={"std": 200.0},
        num_rounds=3,
        seed=1,
        device="cpu",
        results_dir=str(tmp_path),
        run_name="det",
    )
    record = engines.run_inprocess(cfg)
    for row in record.rounds[1:]:
        assert row["detection-recall"] == 1.0  # Krum never picks a vector of noise 200
        assert row["detection-precision"] == pytest.approx(2 / 6)  # it leaves 6 out, 2 attack
