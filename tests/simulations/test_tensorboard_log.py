"""The optional TensorBoard logger: events written per run and read back with TensorBoard."""

from __future__ import annotations

import builtins
import math
from pathlib import Path
from typing import Any

import pytest

from flwr_byz.simulations import cli
from flwr_byz.simulations.experiment import load_experiment
from flwr_byz.simulations.results import RunRecord, RunStore, load_records
from flwr_byz.simulations.tensorboard_log import (
    TensorBoardLogger,
    TensorBoardUnavailable,
    export_records,
    has_events,
    scalars,
    summary_writer_class,
)

TINY = """
name: tb
num-clients: 5
num-byzantine: 1
batch-size: 16
learning-rate: 0.3
num-rounds: 2
attack: gaussian
rule: [median, krum]
"""


def _accumulator(folder: Path) -> Any:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (pip install 'flwr-byz[tensorboard]')",
    )
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _steps(acc: Any, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    path = tmp_path / "tb.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


def test_scalars_keep_finite_numbers_only() -> None:
    row = {
        "round": 3,
        "test-accuracy": 0.5,
        "replies": 10,
        "variance-norm-ratio": math.inf,
        "test-loss": math.nan,
        "kept-model": False,
        "selected-nodes": [1, 2],
        "reason": "text",
    }
    assert scalars(row) == {"test-accuracy": 0.5, "replies": 10.0}


def test_logger_writes_each_round_once_with_the_rounds_on_disk(tiny: Path, tmp_path: Path) -> None:
    cfg = load_experiment(tiny, results_dir=tmp_path / "results").runs[0]
    store = RunStore(cfg.run_dir)
    rows = [
        {"round": t, "test-accuracy": 0.1 * (t + 1), "variance-norm-ratio": 0.5 / (t + 1)}
        for t in range(4)
    ]
    for row in rows[:2]:  # rounds 0 and 1 were on disk before (a resume at round 2)
        store.append_round(row)
    board_dir = tmp_path / "board"
    with TensorBoardLogger(board_dir) as board:
        for row in rows[2:]:
            store.append_round(row)
            board.on_round(cfg, int(row["round"]), row)
        board.run_finished(cfg, RunRecord(cfg.to_flower(), "finished", 3, rows))
    folder = board_dir / cfg.run_name
    assert folder == board_dir / "tb" / "rule=median"
    acc = _accumulator(folder)
    assert _steps(acc, "test-accuracy") == [(t, pytest.approx(0.1 * (t + 1))) for t in range(4)]
    assert [s for s, _ in _steps(acc, "variance-norm-ratio")] == [0, 1, 2, 3]
    assert "config/text_summary" in acc.Tags()["tensors"]  # the run config as text

    # a finished run met again (skipped) is not written twice
    files = sorted(folder.glob("events.out.tfevents.*"))
    with TensorBoardLogger(board_dir) as board:
        board.run_finished(cfg, RunRecord(cfg.to_flower(), "finished", 3, rows))
    assert sorted(folder.glob("events.out.tfevents.*")) == files


def test_a_restarted_run_hides_what_it_logged_before(tiny: Path, tmp_path: Path) -> None:
    cfg = load_experiment(tiny, results_dir=tmp_path / "results").runs[0]
    board_dir = tmp_path / "board"
    with TensorBoardLogger(board_dir) as board:  # a first attempt, later reset (other numbers)
        for t in range(3):
            board.on_round(cfg, t + 1, {"round": t + 1, "test-accuracy": 0.9})
    store = RunStore(cfg.run_dir)
    rows = [{"round": t, "test-accuracy": 0.2} for t in range(2)]
    for row in rows:
        store.append_round(row)
    with TensorBoardLogger(board_dir) as board:
        board.on_round(cfg, 1, rows[1])
        board.run_finished(cfg, RunRecord(cfg.to_flower(), "finished", 1, rows))
    acc = _accumulator(board_dir / cfg.run_name)
    assert _steps(acc, "test-accuracy") == [(0, pytest.approx(0.2)), (1, pytest.approx(0.2))]


def test_cli_run_with_tensorboard_logs_every_run_and_resumes(tiny: Path, tmp_path: Path) -> None:
    results, board = tmp_path / "results", tmp_path / "board"
    base = ["run", str(tiny), "--results", str(results), "--no-plot", "--tensorboard", str(board)]
    assert cli.main([*base, "--rounds", "1"]) == 0
    assert cli.main(base) == 0  # 2 rounds: both runs continue from round 1
    records = load_records(results)
    assert sorted(records) == ["tb/rule=krum", "tb/rule=median"]
    for name, record in records.items():
        acc = _accumulator(board / name)
        expected = {
            int(row["round"]): float(row["test-accuracy"])
            for row in record.rounds
            if isinstance(row.get("test-accuracy"), float)
        }
        assert sorted(expected) == [0, 1, 2]
        got = _steps(acc, "test-accuracy")
        assert [s for s, _ in got] == [0, 1, 2]  # each round once, also across the resume
        assert dict(got) == pytest.approx(expected, rel=1e-6)
        tags = set(acc.Tags()["scalars"])
        assert {"test-loss", "round-seconds"} <= tags
        # the engine's diagnostics, under their rounds.jsonl names (with or without "byz.")
        for key in ("variance-norm-ratio", "byzantine-influence", "agg-seconds", "kept-model"):
            assert key in tags or f"byz.{key}" in tags, key
        assert "selected-nodes" not in tags and "byz.selected-nodes" not in tags  # lists

    out = tmp_path / "exported"
    assert cli.main(["tensorboard", str(results), "--out", str(out)]) == 0
    assert has_events(out / "tb" / "rule=krum") and has_events(out / "tb" / "rule=median")
    exported = _accumulator(out / "tb" / "rule=krum")
    assert [s for s, _ in _steps(exported, "test-accuracy")] == [0, 1, 2]
    assert export_records(tmp_path / "nothing-here", out) == []


def test_missing_tensorboard_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("tensorboard", "torch.utils.tensorboard")):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(TensorBoardUnavailable, match=r"flwr-byz\[tensorboard\]"):
        summary_writer_class()
    path = tmp_path / "tb.yaml"
    path.write_text(TINY, encoding="utf-8")
    argv = ["run", str(path), "--results", str(tmp_path / "r"), "--tensorboard", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "pip install 'flwr-byz[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before any run started
