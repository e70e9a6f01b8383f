"""Figures that say what they draw: titles with n, f, attack, rule and pre-aggregation,
identical curves told apart, the variance-norm ratio explained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flwr_byz.metrics import kappa
from flwr_byz.simulations.plots import facts, line_styles, metric_figure, round_value, vn_thresholds
from flwr_byz.simulations.results import RunRecord, RunStore

plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is not installed")

CONFIG = {
    "num-clients": 10,
    "num-byzantine": 2,
    "attack": "alie",
    "channel-fault": "none",
    "rule": "krum",
    "rule-options": "{}",
    "pre": "",
}


def _record(accs: list[float], ratios: list[float] | None = None, **config: Any) -> RunRecord:
    rounds = []
    for t, acc in enumerate(accs):
        row: dict[str, Any] = {"round": t, "test-accuracy": acc}
        if ratios is not None:
            row["byz.variance-norm-ratio"] = ratios[t]  # the engine's prefixed name
        rounds.append(row)
    return RunRecord({**CONFIG, **config}, "finished", len(accs) - 1, rounds)


def _texts(fig: Any) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def test_facts_name_n_f_attack_rule_and_pre() -> None:
    krum, median = dict(CONFIG), {**CONFIG, "rule": "median", "pre": "nnm"}
    assert facts([krum]) == "n=10; f=2; attack alie; rule krum"
    assert facts([krum, median]) == (
        "n=10; f=2; attack alie; rule krum/median; pre-aggregation none/nnm"
    )
    fault = {**CONFIG, "channel-fault": "bit_flip", "attack": "none"}
    assert facts([fault]) == "n=10; f=2; channel fault bit_flip; rule krum"
    many = [{**CONFIG, "rule": r} for r in ("a", "b", "c", "d", "e")]
    assert "rule: 5 values (see legend)" in facts(many)
    assert facts([{}]) == ""


def test_accuracy_title_states_the_runs() -> None:
    records = [
        ("rule=krum", _record([0.1, 0.5, 0.7])),
        ("rule=median", _record([0.1, 0.4, 0.6], rule="median", pre="nnm")),
    ]
    fig = metric_figure(plt, "test-accuracy", records, title="exp")
    try:
        title = fig.axes[0].get_title()
        assert title.startswith("exp: test accuracy")
        for fact in ("n=10", "f=2", "attack alie", "rule krum/median", "pre-aggregation none/nnm"):
            assert fact in title
    finally:
        plt.close(fig)


def test_identical_curves_get_distinct_styles_and_a_legend_note() -> None:
    same = [0.02 * t for t in range(40)]
    records = [
        ("rule=krum", _record(same)),
        ("rule=median", _record(same, rule="median")),
        ("rule=average", _record([0.01 * t for t in range(40)], rule="average")),
        ("rule=trmean", _record(same, rule="trmean")),
    ]
    fig = metric_figure(plt, "test-accuracy", records)
    try:
        lines = fig.axes[0].get_lines()
        styles = [(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines]
        assert len(set(styles)) == len(styles) == 4
        labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
        assert labels == [
            "rule=krum",
            "rule=median (identical to rule=krum)",
            "rule=average",
            "rule=trmean (identical to rule=krum)",
        ]
        copies = [ln for ln in lines if ln.get_marker() not in ("None", None, "")]
        assert len(copies) == 2  # the two copies carry markers, at different rounds
        assert copies[0].get_markevery() != copies[1].get_markevery()
    finally:
        plt.close(fig)


def test_line_styles_of_many_lines_stay_distinct() -> None:
    curves = [(f"r{i}", [0, 1], [0.1 * i, 0.2 * i + 0.01]) for i in range(30)]
    styles = [(kw["color"], kw["linestyle"], kw.get("marker")) for kw, _ in line_styles(curves)]
    assert len(set(styles)) == 30


def test_variance_norm_ratio_figure_explains_itself() -> None:
    records = [
        ("rule=krum", _record([0.1, 0.5, 0.7], [0.5, 0.02, 0.01])),
        ("rule=median", _record([0.1, 0.4, 0.6], [0.5, 0.03, 0.02], rule="median")),
    ]
    fig = metric_figure(plt, "variance-norm-ratio", records, title="exp")
    try:
        ax = fig.axes[0]
        assert "squared norm of honest mean" in ax.get_ylabel()
        caption = _texts(fig)
        assert "honest variance / squared norm of the honest mean" in caption
        assert "Krum's condition" in caption and "Median's" in caption
        krum, median = 1 / (2 * kappa(10, 2)), 1 / 8
        assert vn_thresholds(10, 2) == {"Krum": pytest.approx(krum), "Median": median}
        assert f"Krum {krum:.3g}, Median {median:.3g}" in caption
        levels = sorted(ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_color() == "grey")
        assert levels == pytest.approx([krum, median])
        assert "n=10; f=2; attack alie; rule krum/median" in ax.get_title()
    finally:
        plt.close(fig)


def test_variance_norm_ratio_without_common_n_f_or_krum_bound() -> None:
    assert "Krum" not in vn_thresholds(6, 2)  # n <= 2f + 2: no bound
    records = [
        ("a", _record([0.1, 0.2], [0.3, 0.2])),
        ("b", _record([0.1, 0.2], [0.3, 0.1], **{"num-clients": 20})),
    ]
    fig = metric_figure(plt, "variance-norm-ratio", records)
    try:
        assert not [ln for ln in fig.axes[0].get_lines() if ln.get_color() == "grey"]
        assert "1/(2" in _texts(fig)  # the conditions as formulas, no numbers
        assert "n=10/20" in fig.axes[0].get_title()
    finally:
        plt.close(fig)


def test_round_value_reads_plain_and_prefixed_names() -> None:
    assert round_value({"variance-norm-ratio": 1.0}, "variance-norm-ratio") == 1.0
    assert round_value({"byz.variance-norm-ratio": 2.0}, "variance-norm-ratio") == 2.0
    assert round_value({}, "variance-norm-ratio") is None


def test_report_figures_state_the_group_and_tell_copies_apart(tmp_path: Path, monkeypatch):
    from flwr_byz.simulations.report import write_report

    runs = {
        "rule=krum_seed=1": _record([0.1, 0.5, 0.7], [0.5, 0.02, 0.01]),
        "rule=median_seed=1": _record([0.1, 0.5, 0.7], [0.5, 0.02, 0.01], rule="median"),
        "rule=krum_pre=nnm_seed=1": _record([0.1, 0.6, 0.8], [0.5, 0.01, 0.01], pre="nnm"),
        "clean_seed=1": _record([0.1, 0.7, 0.9], [0.4, 0.01, 0.005], attack="none"),
    }
    for name, record in runs.items():
        store = RunStore(tmp_path / "exp" / name)
        store.run_dir.mkdir(parents=True)
        store.write_record(record)
    figures: list[Any] = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to read them
    written = write_report(tmp_path / "exp", tmp_path / "out")
    try:
        names = sorted(p.name for p in written if p.suffix == ".png")
        assert names == [
            "accuracy_0_n_10_f_2_attack_alie.png",
            "variance_norm_ratio_0_n_10_f_2_attack_alie.png",
        ]
        accuracy, ratio = figures
        title = " ".join(accuracy.axes[0].get_title().split())  # titles wrap at word breaks
        assert title.startswith("exp: test accuracy")
        for fact in ("n=10", "f=2", "attack alie", "rule krum/median", "pre-aggregation"):
            assert fact in title
        assert "attack-free reference" in title
        labels = [t.get_text() for t in accuracy.axes[0].get_legend().get_texts()]
        assert "median (1) (identical to krum (1))" in labels
        assert "krum, pre nnm (1)" in labels and "krum, no attack (1)" in labels
        lines = accuracy.axes[0].get_lines()
        styles = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}
        assert len(styles) == len(lines) == 4
        assert "honest variance / squared norm of the honest mean" in _texts(ratio)
        assert "Krum's condition holds below" in " ".join(
            t.get_text() for t in ratio.axes[0].get_legend().get_texts()
        )
    finally:
        for fig in figures:
            real_close(fig)


def test_summary_reads_prefixed_diagnostics() -> None:
    from flwr_byz.schema import RunConfig
    from flwr_byz.simulations.runner import summary_row

    rounds = [
        {"round": 0, "test-accuracy": 0.1},
        {"round": 1, "test-accuracy": 0.5, "byz.variance-norm-ratio": 2.0},
        {"round": 2, "test-accuracy": 0.6, "variance-norm-ratio": 4.0, "byzantine-influence": 0.5},
    ]
    row = summary_row(RunConfig(), RunRecord({}, "finished", 2, rounds), "finished")
    assert row["mean-variance-norm-ratio"] == 3.0
    assert row["mean-byzantine-influence"] == 0.5
