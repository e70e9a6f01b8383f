"""The ``flwr-byz`` command line end to end, and the plots."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path

import pytest

from flwr_byz.simulations import cli
from flwr_byz.simulations.plots import plot_directory, plot_records
from flwr_byz.simulations.results import RunRecord, load_records

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = """
name: tiny
description: "two rules, ALIE through the coordinator"
num-clients: 5
num-byzantine: 1
batch-size: 16
learning-rate: 0.3
num-rounds: 50
seed: [1, 2]
attack: alie
attack-options: {z: 1.5}
rule: [average, median]
"""


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


def test_cli_run_writes_records_summary_and_plots(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    argv = ["run", str(tiny_yaml), "--results", str(results), "--rounds", "2", "--quick"]
    assert cli.main(argv) == 0
    records = load_records(results)
    # --quick keeps the first seed only; --rounds 2 caps the rounds
    assert sorted(records) == ["tiny/rule=average", "tiny/rule=median"]
    assert all(r.completed_rounds == 2 and r.status == "finished" for r in records.values())
    with (results / "tiny" / "summary.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["rule"] for row in rows] == ["average", "median"]
    assert all(float(row["final-accuracy"]) > 0 for row in rows)
    for name in ("accuracy.png", "variance_norm_ratio.png"):
        assert (results / "tiny" / name).read_bytes()[:8] == PNG_MAGIC
    out = capsys.readouterr().out
    assert "rule=median" in out and "final acc" in out

    # second call: everything finished, nothing redone
    before = {k: (results / k / "result.json").read_bytes() for k in records}
    assert cli.main(argv) == 0
    assert {k: (results / k / "result.json").read_bytes() for k in records} == before
    assert "skipped" in capsys.readouterr().out

    assert cli.main(["summary", str(results)]) == 0
    assert "rule=average" in capsys.readouterr().out


def test_cli_reports_config_errors(tiny_yaml: Path, tmp_path: Path, capsys) -> None:
    code = cli.main(["run", str(tiny_yaml), "--results", str(tmp_path), "--set", "batch-size=-3"])
    assert code == 2
    assert "batch-size" in capsys.readouterr().err
    assert cli.main(["show", str(tiny_yaml), "--set", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", str(tiny_yaml), "--engine", "warp"])


def test_cli_show_and_list(tiny_yaml: Path, capsys) -> None:
    assert cli.main(["show", str(tiny_yaml), "--set", "rule=[krum, median, average]"]) == 0
    out = capsys.readouterr().out
    assert "tiny: 6 runs" in out and "rule=krum_seed=2" in out
    assert cli.main(["list"]) == 0
    assert "quickstart" in capsys.readouterr().out


def _record(values: list[float | str]) -> RunRecord:
    rounds = [
        {"round": i, "test-accuracy": 0.1 * i, "variance-norm-ratio": v}
        for i, v in enumerate(values)
    ]
    return RunRecord(config={}, status="finished", completed_rounds=len(values) - 1, rounds=rounds)


def test_plots_are_png_files(tmp_path: Path) -> None:
    files = plot_records(
        [("a", _record([1.0, 2.0, "inf"])), ("b", _record([0.5, 0.2, 0.1]))], tmp_path
    )
    assert sorted(p.name for p in files) == ["accuracy.png", "variance_norm_ratio.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in files)


def test_plot_directory_reads_records(tmp_path: Path) -> None:
    from flwr_byz.simulations.results import RunStore

    RunStore(tmp_path / "exp" / "r1").write_record(_record([1.0, 0.5]))
    files = plot_directory(tmp_path)
    assert {p.name for p in files} == {"accuracy.png", "variance_norm_ratio.png"}
    data = json.loads((tmp_path / "exp" / "r1" / "result.json").read_text())
    assert data["best-accuracy"] == pytest.approx(0.1)


def test_plots_skipped_with_a_message_without_matplotlib(tmp_path: Path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_records([("a", _record([1.0, 2.0]))], tmp_path) == []
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
