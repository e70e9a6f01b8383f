"""The reproduction report: cases grouped over seeds, mean +- sample std, plots written."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from flwr_byz.simulations.report import write_report
from flwr_byz.simulations.results import RunRecord, RunStore


def _record(
    rule: str, seed: int, accuracies: list[float], backdoor: list[float] | None
) -> RunRecord:
    rounds = [{"round": 0, "test-accuracy": 0.1}]  # the initial model: never the maximum
    for index, acc in enumerate(accuracies, start=1):
        row = {"round": index, "test-accuracy": acc, "byzantine-influence": 0.25 * (index % 2)}
        if backdoor is not None:
            row["backdoor-accuracy"] = backdoor[index - 1]
        rounds.append(row)
    config = {
        "rule": rule,
        "rule-options": "{}",
        "attack": "alie",
        "num-byzantine": 2,
        "num-clients": 9,
        "seed": seed,
        "channel-fault": "none",
    }
    return RunRecord(config, "finished", len(accuracies), rounds)


def test_report_means_and_sample_stds_over_seeds(tmp_path: Path) -> None:
    runs = {
        ("krum", 1): [0.5, 0.9, 0.7],
        ("krum", 2): [0.6, 0.8, 0.8],
        ("median", 1): [0.4, 0.6, 0.65],
    }
    for (rule, seed), accs in runs.items():
        store = RunStore(tmp_path / "exp" / f"rule={rule}_attack=alie_f=2_seed={seed}")
        store.run_dir.mkdir(parents=True)
        store.write_record(_record(rule, seed, accs, [0.1, 0.3, 0.2]))
    unfinished = RunStore(tmp_path / "exp" / "rule=average_attack=alie_f=2_seed=1")
    unfinished.run_dir.mkdir(parents=True)
    unfinished.write_record(RunRecord({"rule": "average"}, "running", 1, [{"round": 1}]))
    written = write_report(tmp_path / "exp", tmp_path / "out", plots=False)
    assert [p.name for p in written] == ["report.csv", "report.md", "worst_case.csv"]
    with open(tmp_path / "out" / "report.csv", encoding="utf-8") as fh:
        rows = {row["case"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["rule=krum_attack=alie_f=2", "rule=median_attack=alie_f=2"]
    krum = rows["rule=krum_attack=alie_f=2"]
    assert int(krum["seeds"]) == 2
    assert float(krum["max-acc-mean"]) == pytest.approx((0.9 + 0.8) / 2)
    assert float(krum["max-acc-std"]) == pytest.approx(math.sqrt(2 * 0.05**2))  # sample std
    assert float(krum["final-acc-mean"]) == pytest.approx(0.75)
    assert float(krum["max-backdoor-mean"]) == pytest.approx(0.3)
    assert float(krum["byz-rounds-share"]) == pytest.approx(4 / 6)  # rounds 1 and 3 of each
    median = rows["rule=median_attack=alie_f=2"]
    assert float(median["max-acc-std"]) == 0.0 and int(median["seeds"]) == 1
    table = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| rule=krum_attack=alie_f=2 | 2 | 85.0 +- 7.1 | 75.0 +- 7.1 |" in table


def test_report_draws_one_figure_pair_per_group(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for rule in ("krum", "median"):
        store = RunStore(tmp_path / "exp" / f"rule={rule}_seed=1")
        store.run_dir.mkdir(parents=True)
        store.write_record(_record(rule, 1, [0.5, 0.6], None))
    written = write_report(tmp_path / "exp", tmp_path / "out")
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == ["accuracy_0_n_9_f_2_attack_alie.png"]  # no variance-norm ratio recorded
    assert (tmp_path / "out" / pngs[0]).stat().st_size > 1000


def test_report_of_nothing_finished_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished run"):
        write_report(tmp_path / "empty", tmp_path / "out")


def test_worst_case_over_attacks_and_heatmap(tmp_path: Path) -> None:
    from flwr_byz.simulations.report import cases, plot_heatmaps, worst_case
    from flwr_byz.simulations.results import load_records

    finals = {  # (partitioning, f, attack) -> final accuracy
        ("iid", 1, "alie"): 0.9,
        ("iid", 1, "ipm"): 0.7,
        ("iid", 2, "alie"): 0.6,
        ("dirichlet", 1, "alie"): 0.5,
        ("dirichlet", 1, "ipm"): 0.8,
    }
    for (part, f, attack), acc in finals.items():
        record = _record("median", 1, [0.2, acc], None)
        record.config.update({"partitioning": part, "num-byzantine": f, "attack": attack})
        record.config["dirichlet-alpha"] = 0.5
        store = RunStore(tmp_path / "exp" / f"p={part}_f={f}_a={attack}_seed=1")
        store.run_dir.mkdir(parents=True)
        store.write_record(record)
    clean = _record("median", 1, [0.3, 0.99], None)
    clean.config.update({"attack": "none"})
    store = RunStore(tmp_path / "exp" / "clean_seed=1")
    store.run_dir.mkdir(parents=True)
    store.write_record(clean)
    rows = worst_case(cases(load_records(tmp_path / "exp")))
    got = {(r["heterogeneity"], r["f"]): (r["worst-final-acc"], r["worst-attack"]) for r in rows}
    assert got == {
        ("iid", 1): (0.7, "attack ipm"),
        ("iid", 2): (0.6, "attack alie"),
        ("dirichlet 0.5", 1): (0.5, "attack alie"),
    }  # the attack-free run is not an attack
    pytest.importorskip("matplotlib")
    paths = plot_heatmaps(rows, tmp_path, "exp")
    assert [p.name for p in paths] == ["heatmap_median.png"]


def test_heatmap_rows_go_from_homogeneous_to_label_sorted() -> None:
    from flwr_byz.simulations.report import _heterogeneity_rank

    labels = ["label_sorted", "dirichlet 0.1", "iid", "dirichlet 1.0", "gamma_similarity 0.5"]
    ordered = sorted(labels, key=_heterogeneity_rank)
    assert ordered == [
        "iid",
        "gamma_similarity 0.5",
        "dirichlet 1.0",
        "dirichlet 0.1",
        "label_sorted",
    ]


def test_worst_case_names_the_defence_without_heterogeneity_and_f(tmp_path: Path) -> None:
    from flwr_byz.simulations.report import cases, worst_case
    from flwr_byz.simulations.results import load_records

    for part in ("iid", "label_sorted"):
        for f in (1, 2):
            for pre in ("", "nnm"):
                record = _record("median", 1, [0.2, 0.5], None)
                record.config.update(
                    {"partitioning": part, "num-byzantine": f, "attack": "alie", "pre": pre}
                )
                store = RunStore(tmp_path / "exp" / f"p={part}_f={f}_pre={pre or 'x'}_seed=1")
                store.run_dir.mkdir(parents=True)
                store.write_record(record)
    rows = worst_case(cases(load_records(tmp_path / "exp")))
    assert len(rows) == 8
    assert {r["defence"] for r in rows} == {"pre=none", "pre=nnm"}


def test_one_figure_per_learning_rate_and_labels_name_what_differs(tmp_path: Path) -> None:
    from flwr_byz.simulations.report import _curve_label, _differing, cases
    from flwr_byz.simulations.results import load_records

    pytest.importorskip("matplotlib")
    for lr in (0.5, 0.02):
        for place in ("server", "worker"):
            record = _record("median", 1, [0.5, 0.6], None)
            record.config.update({"learning-rate": lr, "momentum-place": place})
            store = RunStore(tmp_path / "exp" / f"lr={lr}_mom={place}_seed=1")
            store.run_dir.mkdir(parents=True)
            store.write_record(record)
    written = write_report(tmp_path / "exp", tmp_path / "out")
    pngs = sorted(p.name for p in written if p.suffix == ".png")
    assert pngs == [
        "accuracy_0_n_9_f_2_attack_alie_learning_rate_0_02.png",
        "accuracy_1_n_9_f_2_attack_alie_learning_rate_0_5.png",
    ]
    all_cases = cases(load_records(tmp_path / "exp"))
    assert _differing([c.config for c in all_cases]) == ["momentum-place", "learning-rate"]
    assert {_curve_label(c, all_cases) for c in all_cases} == {"median"}
