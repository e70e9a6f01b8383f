"""Optional TensorBoard logging of the round metrics: one TensorBoard run per experiment run.

``flwr-byz run CONFIG --tensorboard DIR`` logs, live, every numeric round metric the ServerApp
records in ``rounds.jsonl`` (``test-accuracy``, ``test-loss``, ``variance-norm-ratio``,
``byzantine-influence``, ``kept-model``, ``agg-seconds``, ...) as a scalar under its own name, at
the round number as the step, in ``DIR/<run name>/`` (``DIR/quickstart/rule=krum_attack=gaussian``).
``flwr-byz tensorboard RESULTS --out DIR`` writes the same from records already on disk. Then
``tensorboard --logdir DIR``.

The rounds on disk are the truth: a run that starts or resumes here opens its writer with
``purge_step=0`` (TensorBoard hides what earlier files of that folder logged) and writes every
round of ``rounds.jsonl`` again before the new ones, so a resumed or extended run shows each
round once. A run skipped as finished is written only when its folder has no events yet.
Lists (``selected-nodes``), booleans and non-finite values (an infinite ratio) are left out.

TensorBoard is optional (``pip install 'flwr-byz[tensorboard]'``); it is imported only when a
logger is made, and its absence is a :class:`TensorBoardUnavailable` error naming the extra.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr_byz.schema import RunConfig
from flwr_byz.simulations.results import RunRecord, RunStore, load_records

INSTALL_HINT = "pip install 'flwr-byz[tensorboard]'"


class TensorBoardUnavailable(ImportError):
    """The ``tensorboard`` package (needed by torch's SummaryWriter) is not installed."""


def summary_writer_class() -> Any:
    """torch's ``SummaryWriter``; :class:`TensorBoardUnavailable` without ``tensorboard``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError when tensorboard is missing
        raise TensorBoardUnavailable(
            f"--tensorboard needs the tensorboard package ({INSTALL_HINT}): {err}"
        ) from None
    return SummaryWriter


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one round that TensorBoard can draw: finite numbers, not booleans."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "round" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        number = float(value)
        if math.isfinite(number):
            out[key] = number
    return out


def _config_text(config: Mapping[str, Any]) -> str:
    """The run config as a Markdown table (TensorBoard's text tab renders it)."""
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {key} | {json.dumps(value)} |" for key, value in sorted(config.items())]
    return "\n".join(lines)


def _wait_past_existing(log_dir: Path) -> None:
    """Wait (at most a second) until the clock is past the newest event file's second.

    Event files are named ``events.out.tfevents.<seconds>.<host>.<pid>.<counter>`` and read in
    name order; a new file must sort after the old ones for its purge to apply to them, which
    a file made in the same second does not guarantee (``...10`` sorts before ``...9``).
    """
    stamps = []
    for path in log_dir.glob("events.out.tfevents.*"):
        try:
            stamps.append(int(path.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    if stamps:
        delay = max(stamps) + 1 - time.time()
        if 0 < delay <= 1.0:
            time.sleep(delay)


class _RunWriter:
    """The writer of one run and the rounds it has written in this process."""

    def __init__(self, writer_class: Any, log_dir: Path, config: Mapping[str, Any]) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        _wait_past_existing(log_dir)
        self.writer = writer_class(log_dir=str(log_dir), purge_step=0)
        self.writer.add_text("config", _config_text(config), 0)
        self.logged: set[int] = set()

    def log(self, round_number: int, row: Mapping[str, Any]) -> None:
        if round_number in self.logged:
            return
        self.logged.add(round_number)
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, round_number)

    def log_rows(self, rows: Iterable[Mapping[str, Any]], below: int | None = None) -> None:
        for row in rows:
            round_number = int(row.get("round", 0))
            if below is None or round_number < below:
                self.log(round_number, row)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def has_events(log_dir: Path) -> bool:
    """Whether ``log_dir`` already holds TensorBoard event files."""
    return log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))


class TensorBoardLogger:
    """Round metrics of a sweep to TensorBoard, one run folder per experiment run.

    The runner calls :meth:`on_round` from its round listener (both engines call it in this
    process) and :meth:`run_finished` when a run ends or is skipped; :meth:`close` at the end.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer_class = summary_writer_class()
        self._runs: dict[str, _RunWriter] = {}
        self._lock = threading.Lock()  # the Flower engine calls back from its ServerApp thread

    def run_dir(self, run_name: str) -> Path:
        """The TensorBoard folder of the run named ``run_name``."""
        return self.log_dir / run_name

    def _open(self, cfg: RunConfig) -> _RunWriter:
        run = self._runs.get(cfg.run_name)
        if run is None:
            run = _RunWriter(self._writer_class, self.run_dir(cfg.run_name), cfg.to_flower())
            self._runs[cfg.run_name] = run
        return run

    def on_round(self, cfg: RunConfig, round_number: int, metrics: Mapping[str, Any]) -> None:
        """Log round ``round_number`` of ``cfg``; on the run's first call also the rounds before
        it that are on disk (round 0, and the rounds before a resume)."""
        with self._lock:
            fresh = cfg.run_name not in self._runs
            run = self._open(cfg)
            if fresh:
                run.log_rows(RunStore(cfg.run_dir).read_rounds(), below=round_number)
            run.log(round_number, metrics)
            run.writer.flush()

    def run_finished(self, cfg: RunConfig, record: RunRecord | None) -> None:
        """Complete and close the run's log from ``record`` (or from disk when None).

        A run that logged no round here (skipped as finished, or nothing left to train) is
        written only when its folder has no events yet.
        """
        with self._lock:
            run = self._runs.pop(cfg.run_name, None)
            if run is None:
                if has_events(self.run_dir(cfg.run_name)):
                    return
                if record is None:
                    record = RunStore(cfg.run_dir).load_record()
                if record is None or not record.rounds:
                    return
                run = _RunWriter(self._writer_class, self.run_dir(cfg.run_name), cfg.to_flower())
            rows = record.rounds if record is not None else RunStore(cfg.run_dir).read_rounds()
            run.log_rows(rows)
            run.close()

    def run_failed(self, cfg: RunConfig) -> None:
        """Close the run's writer, keeping the rounds it logged (a failed run)."""
        with self._lock:
            run = self._runs.pop(cfg.run_name, None)
            if run is not None:
                run.close()

    def close(self) -> None:
        """Close every writer still open (a run that failed or was interrupted)."""
        with self._lock:
            for run in self._runs.values():
                run.close()
            self._runs.clear()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_records(results_dir: str | Path, log_dir: str | Path) -> list[Path]:
    """Write every run record under ``results_dir`` as a TensorBoard run under ``log_dir``
    (``log_dir/<path of the run below results_dir>``); earlier events there are purged.
    Returns the run folders written."""
    writer_class = summary_writer_class()
    written: list[Path] = []
    for name, record in load_records(results_dir).items():
        folder = Path(log_dir) / name
        run = _RunWriter(writer_class, folder, record.config)
        run.log_rows(record.rounds)
        run.close()
        written.append(folder)
    return written
