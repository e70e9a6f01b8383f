"""Plots of an experiment: test accuracy and variance-norm ratio per round, one line per run.

matplotlib is optional (``pip install flwr-byz[plot]``): it is imported lazily and, when
absent, plotting is skipped with a message instead of failing the experiment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from simulations.results import RunRecord, load_records

PLOTS = {
    "test-accuracy": ("accuracy.png", "test accuracy", False),
    "variance-norm-ratio": ("variance_norm_ratio.png", "variance-norm ratio", True),
}


def _series(record: RunRecord, key: str) -> tuple[list[int], list[float]]:
    xs: list[int] = []
    ys: list[float] = []
    for row in record.rounds:
        value = row.get(key)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            xs.append(int(row.get("round", len(xs))))
            ys.append(float(value))
    return xs, ys


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: plots skipped (pip install 'flwr-byz[plot]')")
        return None
    return plt


def plot_records(
    records: Sequence[tuple[str, RunRecord]], out_dir: str | Path, title: str = ""
) -> list[Path]:
    """Draw one PNG per metric in ``PLOTS`` with a line per (label, record); returns the files.

    A metric no run recorded is skipped; an empty list is returned without matplotlib.
    """
    plt = _pyplot()
    if plt is None:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for key, (filename, ylabel, log_scale) in PLOTS.items():
        series = [(label, *_series(rec, key)) for label, rec in records]
        series = [(lbl, xs, ys) for lbl, xs, ys in series if xs]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, xs, ys in series:
            if log_scale:
                pts = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and y > 0]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, label=label, linewidth=1.2)
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(title or ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _label(name: str) -> str:
    return name.split("/", 1)[-1]


def plot_experiment(outcomes: Iterable[Any], out_dir: str | Path) -> list[Path]:
    """Plots for the runner's outcomes (runs without a record are left out)."""
    pairs = [(_label(o.config.run_name), o.record) for o in outcomes if o.record is not None]
    return plot_records(pairs, out_dir, title=Path(out_dir).name)


def plot_directory(results_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Plots for every run record found under ``results_dir``."""
    records = load_records(results_dir)
    pairs = [(name, rec) for name, rec in records.items()]
    return plot_records(pairs, out_dir or results_dir, title=Path(results_dir).name)
