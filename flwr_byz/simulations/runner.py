"""Run every point of an experiment on an engine: progress, resume, summary, plots.

Finished runs are skipped (their record is read back); interrupted ones continue from their
checkpoint; new ones start. A progress bar counts runs, another the rounds of the current run.
At the end a summary table (final and best test accuracy per run) is printed and written as
``summary.json`` and ``summary.csv`` next to the runs, and the plots are drawn. Optionally the
round metrics also go to TensorBoard (``tensorboard=DIR``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.experiment import Experiment
from flwr_byz.simulations.plots import round_value
from flwr_byz.simulations.results import (
    RunBusyError,
    RunRecord,
    RunStore,
    _atomic_write_bytes,
    run_status,
)
from flwr_byz.simulations.server_app import quiet_flower, round_listener

SUMMARY_FIELDS = (
    "run",
    "rule",
    "attack",
    "f",
    "n",
    "momentum-place",
    "seed",
    "rounds",
    "final-accuracy",
    "best-accuracy",
    "last10-accuracy",
    "mean-variance-norm-ratio",
    "mean-byzantine-influence",
    "wall-seconds",
    "status",
)


@dataclass
class RunOutcome:
    """What happened to one run of a sweep."""

    config: RunConfig
    record: RunRecord | None
    action: str  # "ran", "resumed", "skipped", "failed", "busy" (another process runs it)
    error: str | None = None


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(float(v))]
    return sum(nums) / len(nums) if nums else None


def summary_row(cfg: RunConfig, record: RunRecord | None, status: str) -> dict[str, Any]:
    """One summary line: the run's main settings and its accuracies."""
    rounds = record.rounds[1:] if record else []
    return {
        "run": cfg.run_name,
        "rule": cfg.rule,
        "attack": cfg.attack,
        "f": cfg.num_byzantine,
        "n": cfg.num_clients,
        "momentum-place": cfg.momentum_place if cfg.momentum else "-",
        "seed": cfg.seed,
        "rounds": record.completed_rounds if record else 0,
        "final-accuracy": record.final_accuracy if record else None,
        "best-accuracy": record.best_accuracy if record else None,
        "last10-accuracy": _mean(record.accuracies[-10:]) if record else None,
        "mean-variance-norm-ratio": _mean([round_value(r, "variance-norm-ratio") for r in rounds]),
        "mean-byzantine-influence": _mean([round_value(r, "byzantine-influence") for r in rounds]),
        "wall-seconds": record.wall_seconds if record else None,
        "status": status,
    }


def write_summary(rows: list[dict[str, Any]], directory: Path) -> None:
    """``summary.json`` and ``summary.csv`` in ``directory`` (each written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = json.dumps(rows, indent=1).encode("utf-8")
    _atomic_write_bytes(directory / "summary.json", lambda fh: fh.write(data))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    encoded = text.getvalue().encode("utf-8")
    _atomic_write_bytes(directory / "summary.csv", lambda fh: fh.write(encoded))


def outcome_row(outcome: RunOutcome) -> dict[str, Any]:
    """The summary line of ``outcome``; a run that failed or was busy here is looked up on disk
    again, so that a run finished by another runner on the same folder shows as finished."""
    status = outcome.action if outcome.error is None else "failed"
    record = outcome.record
    if status in ("failed", "busy"):
        try:
            disk_status, _ = run_status(outcome.config)
            if disk_status == "finished":
                record, status = RunStore(outcome.config.run_dir).load_record(), "finished"
            elif status == "busy":
                record = RunStore(outcome.config.run_dir).load_record()
        except (OSError, ValueError):
            pass
    return summary_row(outcome.config, record, status)


def print_summary(rows: list[dict[str, Any]], title: str = "summary") -> None:
    """The summary as a rich table (plain text when rich is absent)."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cols = (
        "rounds",
        "final-accuracy",
        "best-accuracy",
        "last10-accuracy",
        "mean-variance-norm-ratio",
        "mean-byzantine-influence",
        "status",
    )
    heads = (
        "rounds",
        "final acc",
        "best acc",
        "last-10 acc",
        "mean VN ratio",
        "mean byz infl",
        "status",
    )

    def label(row: dict[str, Any]) -> str:
        return str(row["run"]).split("/", 1)[-1]

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich ships with flwr
        print(title)
        print("\t".join(("run", *heads)))
        for row in rows:
            print("\t".join((label(row), *(fmt(row[c]) for c in cols))))
        return
    table = Table(title=title)
    table.add_column("run", overflow="fold")
    for head in heads:
        table.add_column(head, justify="right")
    for row in rows:
        table.add_row(label(row), *(fmt(row[c]) for c in cols))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def run_experiment(
    experiment: Experiment,
    engine: str = "inprocess",
    threads: int | None = 1,
    progress: bool = True,
    plots: bool = True,
    verbose: bool = False,
    keep_going: bool = False,
    tensorboard: str | Path | None = None,
) -> list[RunOutcome]:
    """Run all runs of ``experiment`` (skip finished, resume partial); summary and plots.

    With ``keep_going`` a failing run is reported and the sweep goes on; otherwise it raises.
    With ``tensorboard`` (a folder) the round metrics are also logged there, one TensorBoard run
    per run (:mod:`flwr_byz.simulations.tensorboard_log`; needs the ``tensorboard`` extra).
    """
    if engine not in engines.ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines: {', '.join(engines.ENGINES)}")
    board = None
    if tensorboard is not None:  # before any run: a missing package fails the sweep at once
        from flwr_byz.simulations.tensorboard_log import TensorBoardLogger

        board = TensorBoardLogger(tensorboard)
    if not verbose:
        quiet_flower()
    outcomes: list[RunOutcome] = []
    bar = _Progress(enabled=progress, total_runs=len(experiment.runs))

    def on_round(cfg: RunConfig, round_number: int, metrics: dict[str, Any]) -> None:
        bar.on_round(cfg, round_number, metrics)
        if board is not None:
            board.on_round(cfg, round_number, metrics)

    def finished(cfg: RunConfig, record: RunRecord | None) -> None:
        if board is not None:
            board.run_finished(cfg, record)

    with bar, contextlib.ExitStack() as stack:
        if board is not None:
            stack.enter_context(board)
        for cfg in experiment.runs:
            try:
                status, done = run_status(cfg)
            except ValueError as err:  # a different run, a damaged record or checkpoint
                if not keep_going:
                    raise
                error = f"{type(err).__name__}: {err}"
                outcomes.append(RunOutcome(cfg, None, "failed", error))
                bar.run_done(cfg, failed=True, error=error)
                continue
            if status == "finished":
                record = RunStore(cfg.run_dir).load_record()
                outcomes.append(RunOutcome(cfg, record, "skipped"))
                finished(cfg, record)
                bar.run_done(cfg, skipped=True)
                continue
            bar.start_run(cfg, done)
            action = "resumed" if status == "partial" else "ran"
            try:
                with round_listener(on_round):
                    record = engines.run(cfg, engine=engine, threads=threads, verbose=verbose)
            except RunBusyError as err:  # another runner has it: not a failure of this run
                outcomes.append(RunOutcome(cfg, None, "busy", None))
                bar.run_done(cfg, busy=True)
                print(f"{cfg.run_name}: {err}")
                continue
            except Exception as err:
                if board is not None:
                    board.run_failed(cfg)
                if not keep_going:
                    raise
                error = f"{type(err).__name__}: {err}"
                outcomes.append(RunOutcome(cfg, None, "failed", error))
                bar.run_done(cfg, failed=True, error=error)
                continue
            outcomes.append(RunOutcome(cfg, record, action))
            finished(cfg, record)
            bar.run_done(cfg)
    rows = [outcome_row(o) for o in outcomes]
    if experiment.runs:
        out_dir = Path(experiment.runs[0].results_dir) / experiment.name
        write_summary(rows, out_dir)
        print_summary(rows, title=f"{experiment.name} ({engine})")
        if plots:
            from flwr_byz.simulations import plots as plotting

            plotting.plot_experiment(outcomes, out_dir)
        print(f"results: {out_dir.resolve()} (summary.csv, one folder per run)", flush=True)
    return outcomes


class _Progress:
    """Progress of a sweep: two rich bars on a terminal, plain flushed lines otherwise.

    Plain mode (a log file, CI, ``nohup``) prints one line when a run starts, one every tenth of
    its rounds (with the last test accuracy) and one when it ends, so a long sweep can be
    followed with ``tail -f``. Disabled: silent.
    """

    def __init__(self, enabled: bool, total_runs: int, plain: bool | None = None) -> None:
        self.enabled = enabled
        self.total_runs = total_runs
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self._progress: Any = None
        self._runs_task: Any = None
        self._round_task: Any = None
        self._t0 = time.perf_counter()
        self._run_t0 = self._t0
        self._finished_runs = 0
        self._next_line_round = 0
        self._line_step = 1
        self._last_acc: float | None = None

    def __enter__(self) -> _Progress:
        if self.enabled and not self.plain:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._progress.__enter__()
            self._runs_task = self._progress.add_task("runs", total=self.total_runs, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _line(self, text: str) -> None:
        elapsed = time.perf_counter() - self._t0
        print(f"[{elapsed:8.0f}s] {text}", flush=True)

    def _plain_on(self) -> bool:
        return self.enabled and self.plain

    def start_run(self, cfg: RunConfig, done: int) -> None:
        self._run_t0 = time.perf_counter()
        self._last_acc = None
        self._line_step = max(1, cfg.num_rounds // 10)
        self._next_line_round = done + self._line_step
        if self._plain_on():
            start = f"resuming at round {done + 1}" if done else "starting"
            position = f"run {self._finished_runs + 1}/{self.total_runs}"
            self._line(f"{position} {cfg.run_name}: {start} ({cfg.num_rounds} rounds)")
        if self._progress is None:
            return
        if self._round_task is not None:
            self._progress.remove_task(self._round_task)
        self._round_task = self._progress.add_task(
            f"  {cfg.run_name}", total=cfg.num_rounds, completed=done, info=""
        )

    def on_round(self, cfg: RunConfig, round_number: int, metrics: dict[str, Any]) -> None:
        acc = metrics.get("test-accuracy")
        if isinstance(acc, float):
            self._last_acc = acc
        info = f"acc {acc:.3f}" if isinstance(acc, float) else ""
        if self._plain_on() and round_number >= self._next_line_round:
            self._next_line_round = round_number + self._line_step
            last = self._last_acc
            acc_text = f", test accuracy {last:.4f}" if last is not None else ""
            self._line(f"  {cfg.run_name}: round {round_number}/{cfg.num_rounds}{acc_text}")
        if self._progress is None or self._round_task is None:
            return
        self._progress.update(self._round_task, completed=round_number, info=info)

    def run_done(
        self,
        cfg: RunConfig,
        skipped: bool = False,
        failed: bool = False,
        busy: bool = False,
        error: str | None = None,
    ) -> None:
        self._finished_runs += 1
        note = "skipped (finished)" if skipped else ("FAILED" if failed else "done")
        note = "busy (another runner)" if busy else note
        if self._plain_on():
            took = "" if skipped else f" in {time.perf_counter() - self._run_t0:.0f}s"
            why = f": {error}" if error else ""
            position = f"run {self._finished_runs}/{self.total_runs}"
            self._line(f"{position} {cfg.run_name}: {note}{took}{why}")
        if self._progress is None:
            return
        self._progress.update(self._runs_task, advance=1, info=f"{cfg.run_name}: {note}")
