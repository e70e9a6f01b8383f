"""Plots of an experiment: test accuracy and variance-norm ratio per round, one line per run.

Every figure's title says what is drawn: n, f, the attack (or channel fault), the rule(s) and
the pre-aggregation when a run has one (:func:`facts`). Curves that coincide are not hidden
under each other: every line has its own colour and line style, and a curve identical to an
earlier one also gets hollow markers (offset along the round axis) and "(identical to X)" in
the legend (:func:`line_styles`). The variance-norm-ratio figure explains its quantity below
the axes and, when all its runs share n and f, draws the thresholds of Krum's and Median's
robustness conditions (:func:`vn_thresholds`, from :mod:`flwr_byz.metrics`).

matplotlib is optional (``pip install flwr-byz[plot]``): it is imported lazily and, when
absent, plotting is skipped with a message instead of failing the experiment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr_byz.metrics import PREFIX, kappa
from flwr_byz.simulations.results import RunRecord, load_records

PLOTS = {
    "test-accuracy": ("accuracy.png", "test accuracy", False),
    "variance-norm-ratio": ("variance_norm_ratio.png", "variance-norm ratio", True),
}
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "P", "*")
#: the variance-norm ratio in words and as a formula (flwr_byz.metrics.variance_norm_ratio)
VN_DEFINITION = (
    r"variance-norm ratio = $\mathrm{mean}_i\,\Vert g_i - \bar g\Vert^2 / \Vert \bar g\Vert^2$"
    " over the honest gradients: honest variance / squared norm of the honest mean"
)
VN_YLABEL = "variance-norm ratio (honest variance / squared norm of honest mean)"


# ------------------------------------------------------------------------------ what is drawn


def _distinct(values: Iterable[Any]) -> list[str]:
    """The distinct values as text, in order of first appearance (None left out)."""
    return list(dict.fromkeys(str(v) for v in values if v is not None))


def attack_text(cfg: Mapping[str, Any]) -> str:
    """``attack X``, or ``channel fault X`` for a run whose channel corrupts the vectors."""
    fault = str(cfg.get("channel-fault", "none"))
    return f"channel fault {fault}" if fault != "none" else f"attack {cfg.get('attack', 'none')}"


def rule_text(cfg: Mapping[str, Any]) -> str:
    """The rule with its options when it has some (``krum {"m": 3}``)."""
    options = str(cfg.get("rule-options", "{}"))
    return str(cfg.get("rule")) + ("" if options in ("{}", "") else f" {options}")


def _joined(name: str, values: Sequence[str], most: int = 4) -> str | None:
    if not values:
        return None
    if len(values) > most:
        return f"{name.rstrip('= ')}: {len(values)} values (see legend)"
    return f"{name}{'/'.join(values)}"


def facts(configs: Iterable[Mapping[str, Any]]) -> str:
    """n, f, attack, rule (and pre-aggregation, if any run has one) of the runs drawn.

    A fact shared by all runs is its value (``n=10``); one that differs lists the values
    (``rule krum/median``) or, beyond four, counts them. Records without a config give "".
    """
    cfgs = [cfg for cfg in configs if cfg]
    if not cfgs:
        return ""
    fault = [str(cfg.get("channel-fault", "none")) for cfg in cfgs]
    attacks = _distinct(
        c.get("attack", "none") for c, x in zip(cfgs, fault, strict=True) if x == "none"
    )
    faults = _distinct(x for x in fault if x != "none")
    parts = [
        _joined("n=", _distinct(cfg.get("num-clients") for cfg in cfgs)),
        _joined("f=", _distinct(cfg.get("num-byzantine") for cfg in cfgs)),
        _joined("attack ", attacks),
        _joined("channel fault ", faults),
        _joined("rule ", _distinct(rule_text(cfg) for cfg in cfgs)),
    ]
    pres = _distinct(cfg.get("pre") or "none" for cfg in cfgs)
    if pres != ["none"]:
        parts.append(_joined("pre-aggregation ", pres))
    return "; ".join(p for p in parts if p)


def common_n_f(configs: Iterable[Mapping[str, Any]]) -> tuple[int, int] | None:
    """(n, f) when every config has the same ones, else None."""
    pairs = {(cfg.get("num-clients"), cfg.get("num-byzantine")) for cfg in configs if cfg}
    if len(pairs) != 1:
        return None
    n, f = next(iter(pairs))
    try:
        return int(str(n)), int(str(f))
    except ValueError:
        return None


def vn_thresholds(n: int, f: int) -> dict[str, float]:
    """The variance-norm ratio below which the robustness conditions hold (flwr_byz.metrics).

    Krum (eq. 3): ``2 kappa(n, f) variance < ||g_bar||^2``, i.e. ratio < ``1 / (2 kappa)``
    (absent when the bound does not exist, ``n <= 2f + 2``); Median (eq. 4):
    ``(n - f) variance < ||g_bar||^2``, i.e. ratio < ``1 / (n - f)``.
    """
    out: dict[str, float] = {}
    k = kappa(n, f) if n >= 1 and f >= 0 else math.inf
    if math.isfinite(k) and k > 0:
        out["Krum"] = 1.0 / (2.0 * k)
    if n > f:
        out["Median"] = 1.0 / (n - f)
    return out


def vn_caption(n_f: tuple[int, int] | None) -> str:
    """The text under a variance-norm-ratio figure: the definition and the conditions."""
    conditions = (
        r"Krum's condition (eq. 3) needs it below $1/(2\kappa(n,f))$,"
        r" Median's (eq. 4) below $1/(n-f)$"
    )
    if n_f is None:
        return f"{VN_DEFINITION}.\n{conditions} (lower is easier to defend)."
    n, f = n_f
    limits = vn_thresholds(n, f)
    krum = f"{limits['Krum']:.3g}" if "Krum" in limits else "none (no bound for n <= 2f+2)"
    median = f"{limits['Median']:.3g}" if "Median" in limits else "none"
    return (
        f"{VN_DEFINITION}.\n{conditions}; lower is easier to defend.\n"
        f"For n={n}, f={f}: Krum {krum}, Median {median} (grey lines)."
    )


def label_axes(
    ax: Any, ylabel: str, vn: bool, n_f: tuple[int, int] | None, log: bool, xlabel: str
) -> None:
    """Axis labels and scale of a per-round figure; the variance-norm ratio gets its long label
    and Krum's and Median's thresholds."""
    if vn:
        draw_vn_thresholds(ax, n_f)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(VN_YLABEL if vn else ylabel, fontsize="small" if vn else "medium")


def draw_vn_thresholds(ax: Any, n_f: tuple[int, int] | None) -> None:
    """Grey horizontal lines at the Krum and Median thresholds of (n, f)."""
    if n_f is None:
        return
    for (name, value), style in zip(vn_thresholds(*n_f).items(), (":", "-."), strict=False):
        ax.axhline(
            value,
            color="grey",
            linestyle=style,
            linewidth=1.0,
            label=f"{name}'s condition holds below {value:.3g}",
        )


# ----------------------------------------------------------------------- telling lines apart


Curve = tuple[Sequence[float], Sequence[float]]


def same_curve(a: Curve, b: Curve) -> bool:
    """Whether two (xs, ys) curves coincide (same rounds, values equal to rounding)."""
    (xa, ya), (xb, yb) = a, b
    if list(xa) != list(xb) or len(ya) != len(yb):
        return False
    return all(math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12) for u, v in zip(ya, yb, strict=True))


def line_styles(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
) -> list[tuple[dict[str, Any], str]]:
    """Per (label, xs, ys): the ``ax.plot`` keyword arguments and the legend label.

    Line ``i`` gets colour ``C{i mod 10}`` and line style ``i mod 4`` (distinct for 20 lines;
    beyond, markers tell them apart). A curve equal to an earlier one is drawn on top with
    hollow markers, offset along the x axis from the other copies', and its label says
    "(identical to <first label>)".
    """
    out: list[tuple[dict[str, Any], str]] = []
    copies: dict[int, int] = {}  # first index of a curve -> copies seen so far
    for i, (label, xs, ys) in enumerate(curves):
        kwargs: dict[str, Any] = {
            "color": f"C{i % 10}",
            "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "linewidth": 1.3,
        }
        step = max(1, len(xs) // 12)
        if i >= 20:
            kwargs.update(marker=MARKERS[(i // 20) % len(MARKERS)], markevery=step, markersize=4)
        first = next(
            (j for j in range(i) if same_curve((curves[j][1], curves[j][2]), (xs, ys))), None
        )
        if first is not None:
            copies[first] = copies.get(first, 0) + 1
            copy = copies[first]
            kwargs.update(
                marker=MARKERS[copy % len(MARKERS)],
                markevery=((copy * max(1, step // 3)) % step, step),
                markersize=6,
                markerfacecolor="none",
                zorder=2.5 + 0.01 * copy,
            )
            label = f"{label} (identical to {curves[first][0]})"
        out.append((kwargs, label))
    return out


# --------------------------------------------------------------------------------- figures


def round_value(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, or the engine's diagnostic under its prefixed name (``byz.<key>``,
    :data:`flwr_byz.metrics.PREFIX`): records written before and after the prefix both read."""
    return row[key] if key in row else row.get(PREFIX + key)


def _series(record: RunRecord, key: str) -> tuple[list[int], list[float]]:
    xs: list[int] = []
    ys: list[float] = []
    for row in record.rounds:
        value = round_value(row, key)
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


def metric_figure(
    plt: Any, key: str, records: Sequence[tuple[str, RunRecord]], title: str = ""
) -> Any | None:
    """The figure of metric ``key`` (one of ``PLOTS``) with a line per (label, record), or None
    when no run recorded it. The caller saves and closes it."""
    _, ylabel, log_scale = PLOTS[key]
    curves: list[tuple[str, list[int], list[float]]] = []
    drawn: list[RunRecord] = []
    for label, rec in records:
        xs, ys = _series(rec, key)
        if log_scale:
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y) and y > 0]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if xs:
            curves.append((label, xs, ys))
            drawn.append(rec)
    if not curves:
        return None
    vn = key == "variance-norm-ratio"
    fig, ax = plt.subplots(figsize=(8, 5.6 if vn else 5))
    for (_, xs, ys), (kwargs, label) in zip(curves, line_styles(curves), strict=True):
        ax.plot(xs, ys, label=label, **kwargs)
    configs = [rec.config for rec in drawn]
    n_f = common_n_f(configs)
    label_axes(ax, ylabel, vn, n_f, log_scale, "round")
    head = f"{title}: {ylabel}" if title else ylabel
    described = facts(configs)
    ax.set_title(f"{head}\n{described}" if described else head, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")
    if vn:
        fig.text(0.01, 0.01, vn_caption(n_f), fontsize="x-small", va="bottom")
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    return fig


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
    for key, (filename, _, _) in PLOTS.items():
        fig = metric_figure(plt, key, records, title)
        if fig is None:
            continue
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
