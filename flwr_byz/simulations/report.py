"""Reproduction report of an experiment: runs grouped by case (every field but the seed), the
accuracies as mean +- std over seeds, how often the rule let a Byzantine vector in, and plots
of accuracy (mean, with the band between the lowest and highest seed) and variance-norm ratio
against the round, one figure per (n, f, attack).

``flwr-byz report RESULTS/EXPERIMENT --out DIR`` writes ``report.csv``, ``report.md`` and the
PNGs; docs/REPRODUCTION.md is built from them.
"""

from __future__ import annotations

import csv
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr_byz.simulations.plots import round_value
from flwr_byz.simulations.results import RunRecord, load_records

SEED_SUFFIX = re.compile(r"_seed=\d+$")
REPORT_FIELDS = (
    "case",
    "rule",
    "rule-options",
    "attack",
    "f",
    "n",
    "seeds",
    "rounds",
    "max-acc-mean",
    "max-acc-std",
    "final-acc-mean",
    "final-acc-std",
    "max-backdoor-mean",
    "max-backdoor-std",
    "final-backdoor-mean",
    "final-backdoor-std",
    "byz-influence-mean",
    "byz-rounds-share",
    "kept-model-rounds",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def series(record: RunRecord, key: str) -> tuple[list[int], list[float]]:
    """(rounds, values) of ``key`` over the training rounds (the initial model excluded)."""
    xs, ys = [], []
    for row in record.rounds:
        rnd, value = int(row.get("round", 0)), _number(round_value(row, key))
        if rnd >= 1 and value is not None:
            xs.append(rnd)
            ys.append(value)
    return xs, ys


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value); (None, None) for none."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


@dataclass
class Case:
    """The runs of one case (all seeds) and what the report says of them."""

    name: str
    records: list[RunRecord] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.records[0].config

    @property
    def group(self) -> str:
        """The figure this case is drawn in: n, f and attack."""
        cfg = self.config
        return f"n={cfg.get('num-clients')}, f={cfg.get('num-byzantine')}, {self.attack_text()}"

    def attack_text(self) -> str:
        cfg = self.config
        fault = str(cfg.get("channel-fault", "none"))
        attack = str(cfg.get("attack", "none"))
        return f"channel fault {fault}" if fault != "none" else f"attack {attack}"

    @property
    def pre(self) -> str:
        """The pre-aggregation chain ("" for none)."""
        return str(self.config.get("pre") or "")

    @property
    def label(self) -> str:
        cfg = self.config
        options = str(cfg.get("rule-options", "{}"))
        return str(cfg.get("rule")) + ("" if options in ("{}", "") else f" {options}")

    def per_seed(self, key: str, pick: str) -> list[float]:
        """``pick`` ("max" or "final") of ``key`` for each seed that recorded it."""
        out = []
        for record in self.records:
            _, ys = series(record, key)
            if ys:
                out.append(max(ys) if pick == "max" else ys[-1])
        return out

    def row(self) -> dict[str, Any]:
        cfg = self.config
        influence = [v for rec in self.records for v in series(rec, "byzantine-influence")[1]]
        kept = [v for rec in self.records for v in series(rec, "kept-model")[1]]
        row: dict[str, Any] = {
            "case": self.name,
            "rule": cfg.get("rule"),
            "rule-options": cfg.get("rule-options", "{}"),
            "attack": self.attack_text().rsplit(" ", 1)[-1],
            "f": cfg.get("num-byzantine"),
            "n": cfg.get("num-clients"),
            "seeds": len(self.records),
            "rounds": min(rec.completed_rounds for rec in self.records),
            "byz-influence-mean": mean_std(influence)[0],
            "byz-rounds-share": (
                sum(1 for v in influence if v > 0) / len(influence) if influence else None
            ),
            "kept-model-rounds": sum(1 for v in kept if v > 0),
        }
        for key, prefix in (("test-accuracy", "acc"), ("backdoor-accuracy", "backdoor")):
            for pick in ("max", "final"):
                mean, std = mean_std(self.per_seed(key, pick))
                row[f"{pick}-{prefix}-mean"], row[f"{pick}-{prefix}-std"] = mean, std
        return row


def cases(records: dict[str, RunRecord]) -> list[Case]:
    """Finished runs grouped by their name without the seed, in name order."""
    grouped: dict[str, Case] = {}
    for name, record in sorted(records.items()):
        if record.status != "finished":
            continue
        key = SEED_SUFFIX.sub("", Path(name).name)
        grouped.setdefault(key, Case(key)).records.append(record)
    return list(grouped.values())


def _pct(mean: Any, std: Any) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f} +- {100 * std:.1f}"


def markdown(rows: Iterable[dict[str, Any]]) -> str:
    """The report as a Markdown table (accuracies in percent, mean +- std over seeds)."""
    rows = list(rows)
    backdoor = any(r["max-backdoor-mean"] is not None for r in rows)
    head = ["case", "seeds", "max acc %", "final acc %"]
    head += ["max backdoor %", "final backdoor %"] if backdoor else []
    head += ["Byzantine influence", "rounds with Byzantine influence"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["case"]), str(r["seeds"])]
        cells += [_pct(r["max-acc-mean"], r["max-acc-std"])]
        cells += [_pct(r["final-acc-mean"], r["final-acc-std"])]
        if backdoor:
            cells += [_pct(r["max-backdoor-mean"], r["max-backdoor-std"])]
            cells += [_pct(r["final-backdoor-mean"], r["final-backdoor-std"])]
        infl, share = r["byz-influence-mean"], r["byz-rounds-share"]
        cells += ["-" if infl is None else f"{infl:.3f}", "-" if share is None else f"{share:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _band(case: Case, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Rounds every seed recorded, with mean, lowest and highest value over the seeds."""
    per = [dict(zip(*series(rec, key), strict=True)) for rec in case.records]
    common = sorted(set.intersection(*(set(p) for p in per))) if per else []
    means = [sum(p[x] for p in per) / len(per) for x in common]
    return (
        common,
        means,
        [min(p[x] for p in per) for x in common],
        [max(p[x] for p in per) for x in common],
    )


def plot_cases(all_cases: Sequence[Case], out_dir: Path, title: str) -> list[Path]:
    """One accuracy and one variance-norm-ratio figure per group (n, f, attack).

    The title states n, f, the attack, the rules and any pre-aggregation of the cases drawn
    (:func:`flwr_byz.simulations.plots.facts`); coinciding curves are told apart as in
    :func:`flwr_byz.simulations.plots.line_styles`; the variance-norm-ratio figure carries its
    definition
    and the Krum / Median thresholds of the group's (n, f).
    """
    from flwr_byz.simulations.plots import (
        _pyplot,
        common_n_f,
        facts,
        label_axes,
        line_styles,
        vn_caption,
    )

    plt = _pyplot()
    if plt is None:
        return []
    written: list[Path] = []
    groups: dict[str, list[Case]] = {}
    baselines = [case for case in all_cases if case.attack_text() == "attack none"]
    split = [key for key in _FIGURE_SPLIT if _varies([c.config for c in all_cases], key)]
    for case in all_cases:
        if case not in baselines or len(baselines) == len(all_cases):
            groups.setdefault(_figure_of(case, split), []).append(case)
    for members in groups.values():  # the attack-free runs as the reference in every figure
        first = members[0].config
        same = [b for b in baselines if all(b.config.get(k) == first.get(k) for k in split)]
        members.extend(b for b in same if b not in members)
    referenced = len(baselines) < len(all_cases)
    for index, (group, members) in enumerate(groups.items()):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", group).strip("_")
        main = [case for case in members if not (referenced and case in baselines)]
        described = facts(case.config for case in main)
        if referenced and len(main) < len(members):
            described += " (+ attack-free reference)"
        n_f = common_n_f(case.config for case in main)
        described += "".join(f"; {key} {main[0].config.get(key)}" for key in split)
        described = "\n".join(textwrap.wrap(described, 85, break_on_hyphens=False))
        shown = _differing([case.config for case in members])
        for key, ylabel, log in (
            ("test-accuracy", "test accuracy", False),
            ("variance-norm-ratio", "variance-norm ratio", True),
        ):
            curves: list[tuple[str, list[int], list[float]]] = []
            bands: list[tuple[list[float], list[float], int]] = []
            for case in members:
                xs, mean, low, high = _band(case, key)
                if log:
                    keep = [i for i, v in enumerate(mean) if v > 0]
                    xs, mean = [xs[i] for i in keep], [mean[i] for i in keep]
                    low, high = [low[i] for i in keep], [high[i] for i in keep]
                if not xs:
                    continue
                seeds = len(case.records)
                label = _curve_label(case, members) + (f", pre {case.pre}" if case.pre else "")
                label += "".join(f", {_SHORT.get(k, k)}={_value(case.config, k)}" for k in shown)
                if referenced and case in baselines:
                    label += ", no attack"
                curves.append((f"{label} ({seeds})", xs, mean))
                bands.append((low, high, seeds))
            if not curves:
                continue
            vn = key == "variance-norm-ratio"
            fig, ax = plt.subplots(figsize=(7.5, 5.4 if vn else 4.5))
            styles = line_styles(curves)
            for (_, xs, mean), (kwargs, text), (low, high, seeds) in zip(
                curves, styles, bands, strict=True
            ):
                ax.plot(xs, mean, label=text, **kwargs)
                if seeds > 1:
                    ax.fill_between(xs, low, high, color=kwargs["color"], alpha=0.15)
            label_axes(ax, ylabel, vn, n_f, log, "round (step)")
            ax.set_title(f"{title}: {ylabel}\n{described}", fontsize="medium")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="x-small", loc="best", title="rule (seeds)")
            if vn:
                fig.text(0.01, 0.01, vn_caption(n_f), fontsize="x-small", va="bottom")
                fig.tight_layout(rect=(0, 0.12, 1, 1))
            else:
                fig.tight_layout()
            name = "accuracy" if key == "test-accuracy" else "variance_norm_ratio"
            path = out_dir / f"{name}_{index}_{slug}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


# a figure per value of these fields when they vary (the papers' layout: one panel per lr)
_FIGURE_SPLIT = ("learning-rate",)
# fields that are not named in a curve's label (the rule is; the attack is the figure's)
_UNLABELLED = ("rule", "rule-options", "pre", "attack", "attack-options", "channel-fault")
_SHORT = {"momentum-place": "momentum at", "num-byzantine": "f", "num-clients": "n"}


def _varies(configs: Sequence[dict[str, Any]], key: str) -> bool:
    return len({json.dumps(cfg.get(key), sort_keys=True) for cfg in configs}) > 1


def _figure_of(case: Case, split: Sequence[str]) -> str:
    """The figure a case is drawn in: n, f, attack, and the values of the ``split`` fields."""
    return case.group + "".join(f", {key}={case.config.get(key)}" for key in split)


def _value(cfg: dict[str, Any], key: str) -> Any:
    """A run's value of ``key``; the schema's default for runs recorded before the key existed."""
    from flwr_byz.schema import RunConfig

    return cfg[key] if key in cfg else RunConfig().to_flower().get(key)


def _differing(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The fields that define what a run computes (the schema's identity) whose values differ
    between the curves of one figure: named in the labels."""
    from flwr_byz.schema import RunConfig, to_key

    keys = [to_key(name) for name in RunConfig().identity() if name != "seed"]
    keys = [key for key in keys if key not in _UNLABELLED and key != "channel-fault-options"]
    return [
        key
        for key in keys
        if len({json.dumps(_value(c, key), sort_keys=True) for c in configs}) > 1
    ]


def _curve_label(case: Case, members: Sequence[Case]) -> str:
    """The rule, with its options only where the figure holds the same rule with other ones."""
    rule = case.config.get("rule")
    options = {
        str(m.config.get("rule-options", "{}")) for m in members if m.config.get("rule") == rule
    }
    return case.label if len(options) > 1 else str(rule)


# fields that tell settings apart when the worst case is taken over the attacks
_NOT_SETTING = (
    "seed",
    "attack",
    "attack-options",
    "num-attackers",
    "byzantine-partitions",
    "run-name",
    "results-dir",
    "experiment",
    "num-rounds",
    "client-state-dir",
    "coordinator-address",
)
WORST_FIELDS = (
    "setting",
    "defence",
    "rule",
    "f",
    "heterogeneity",
    "attacks",
    "worst-attack",
    "worst-final-acc",
    "worst-max-acc",
)


# The fields that say how heterogeneous the honest data are (a heatmap's rows), and f (its columns):
# what stays of a setting without them is the defence a heatmap panel shows.
_HETEROGENEITY_FIELDS = ("partitioning", "dirichlet-alpha", "similarity-gamma")


def _heterogeneity(cfg: dict[str, Any]) -> str:
    part = str(cfg.get("partitioning", "shared"))
    if part == "dirichlet":
        return f"dirichlet {cfg.get('dirichlet-alpha')}"
    if part == "gamma_similarity":
        return f"gamma_similarity {cfg.get('similarity-gamma')}"
    return part


def _shown(value: Any) -> str:
    return "none" if value in ("", None) else str(value)


def _heterogeneity_rank(label: str) -> tuple[int, float]:
    """Sort key, from the most homogeneous: i.i.d. / shared, gamma-similarity (gamma 1 = i.i.d.,
    falling), Dirichlet (alpha falling), label-sorted."""
    kind, _, value = label.partition(" ")
    number = float(value) if value else 0.0
    order = {"shared": 0, "iid": 0, "gamma_similarity": 1, "dirichlet": 2, "label_sorted": 3}
    return order.get(kind, 4), -number


def worst_case(all_cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Per setting (every field but the attack and the seed), the worst mean accuracy over the
    attacks run against it, and which attack it was (attack-free runs are not attacks)."""
    attacked = [
        case
        for case in all_cases
        if str(case.config.get("attack", "none")) != "none"
        or str(case.config.get("channel-fault", "none")) != "none"
    ]
    ignored = {*_NOT_SETTING, "channel-fault"}
    fields = sorted({k for case in attacked for k in case.config} - ignored)
    varying = [k for k in fields if len({str(c.config.get(k)) for c in attacked}) > 1]
    panel_fields = [k for k in varying if k not in (*_HETEROGENEITY_FIELDS, "num-byzantine")]
    settings: dict[str, list[tuple[Case, dict[str, Any]]]] = {}
    for case in attacked:
        key = ", ".join(f"{k}={case.config.get(k)}" for k in varying) or "all runs"
        settings.setdefault(key, []).append((case, case.row()))
    out = []
    for key, members in settings.items():
        finals = [(row["final-acc-mean"], case) for case, row in members]
        finals = [(v, c) for v, c in finals if v is not None]
        if not finals:
            continue
        worst_final, worst = min(finals, key=lambda item: item[0])
        maxima = [row["max-acc-mean"] for _, row in members if row["max-acc-mean"] is not None]
        cfg = worst.config
        out.append(
            {
                "setting": key,
                "defence": ", ".join(f"{k}={_shown(cfg.get(k))}" for k in panel_fields)
                or str(cfg.get("rule")),
                "rule": cfg.get("rule"),
                "f": cfg.get("num-byzantine"),
                "heterogeneity": _heterogeneity(cfg),
                "attacks": len(members),
                "worst-attack": worst.attack_text(),
                "worst-final-acc": worst_final,
                "worst-max-acc": min(maxima) if maxima else None,
            }
        )
    return out


def _panel_titles(defences: list[str], rule: str) -> dict[str, str]:
    """Each panel's title: its defence setting without the rule and the fields all of the rule's
    panels share (e.g. its options), or the rule's name when nothing is left."""
    parts = {d: d.split(", ") for d in defences}
    common = set.intersection(*(set(p) for p in parts.values())) if parts else set()
    return {
        d: ", ".join(x for x in p if x not in common and not x.startswith("rule=")) or rule
        for d, p in parts.items()
    }


def plot_heatmaps(rows: Sequence[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """Per rule, one figure of heatmaps of the worst final accuracy over the attacks: rows
    heterogeneity (most homogeneous first), columns f, one panel per defence setting of that
    rule (e.g. with and without pre-aggregation or momentum); drawn for sweeps over more than
    one heterogeneity."""
    from flwr_byz.simulations.plots import _pyplot

    by_rule: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        panels = by_rule.setdefault(str(row["rule"]), {})
        panels.setdefault(str(row.get("defence") or row["rule"]), []).append(row)
    written: list[Path] = []
    plt = None
    for rule, panels in by_rule.items():
        hets = sorted(
            {str(r["heterogeneity"]) for m in panels.values() for r in m}, key=_heterogeneity_rank
        )
        fs = sorted({int(r["f"]) for m in panels.values() for r in m})
        if len(hets) < 2:  # a heatmap needs more than one heterogeneity
            continue
        plt = plt or _pyplot()
        if plt is None:
            return written
        columns = min(2, len(panels))
        lines = math.ceil(len(panels) / columns)
        fig, axes = plt.subplots(
            lines,
            columns,
            figsize=(columns * (1.2 * len(fs) + 2.6) + 1.2, lines * (0.6 * len(hets) + 1.6)),
            squeeze=False,
            layout="constrained",
        )
        image = None
        titles = _panel_titles(list(panels), rule)
        for ax, (defence, members) in zip(axes.flat, sorted(panels.items()), strict=False):
            grid = [[math.nan] * len(fs) for _ in hets]
            for r in members:
                i, j = hets.index(str(r["heterogeneity"])), fs.index(int(r["f"]))
                grid[i][j] = float(r["worst-final-acc"])
            image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(fs)), [str(f) for f in fs])
            ax.set_yticks(range(len(hets)), hets)
            ax.set_xlabel("f (Byzantine workers)")
            ax.set_title(titles[defence], fontsize="small")
            for i, line in enumerate(grid):
                for j, value in enumerate(line):
                    if not math.isnan(value):
                        colour = "white" if value < 0.5 else "black"
                        ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", color=colour)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("data heterogeneity")
        if image is not None:
            fig.colorbar(image, ax=axes, label="worst final accuracy over the attacks")
        fig.suptitle(
            f"{title}: {rule}, worst final accuracy (%) over the attacks", fontsize="medium"
        )
        path = out_dir / f"heatmap_{re.sub(r'[^A-Za-z0-9]+', '_', rule)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results_dir: str | Path, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """``report.csv``, ``report.md`` and the figures of the finished runs under ``results_dir``."""
    records = load_records(results_dir)
    all_cases = cases(records)
    if not all_cases:
        raise ValueError(f"no finished run under {results_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [case.row() for case in all_cases]
    with open(out / "report.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.md").write_text(markdown(rows), encoding="utf-8")
    written = [out / "report.csv", out / "report.md"]
    worst = worst_case(all_cases)
    if worst:
        with open(out / "worst_case.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=WORST_FIELDS)
            writer.writeheader()
            writer.writerows(worst)
        written.append(out / "worst_case.csv")
    if plots:
        written += plot_cases(all_cases, out, Path(results_dir).name)
        written += plot_heatmaps(worst, out, Path(results_dir).name)
    return written
