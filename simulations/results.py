"""Results of one run on disk: a JSON record updated every round, and a checkpoint to resume.

Layout under ``<results-dir>/<run-name>/``:

- ``rounds.jsonl``: one JSON line of metrics per round, appended as rounds end (O(1) per round,
  so that 3000-round runs do not rewrite a growing file).
- ``result.json``: the run config, status (``running`` / ``finished``), completed rounds, final
  and best accuracy; once finished also every round's metrics. Written atomically every round.
- ``checkpoint.pt``: model arrays, server optimizer state (momentum buffer), RNG states and the
  round (torch.save, written atomically after every round).

A run is *finished* when its record says so and covers at least the requested rounds with the
same identity (the fields that define what is computed); a finished run is never redone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simulations.experiment import RunConfig

RESULT_FILE = "result.json"
ROUNDS_FILE = "rounds.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via a temporary file in the same directory, then rename (no torn files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Make metrics JSON-safe: non-finite floats become strings ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


def _number(value: Any) -> float | None:
    """A metric value as float (``"inf"``/``"nan"`` strings included), None if not numeric."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly after ``round``."""

    round: int
    arrays: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    identity: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """The content of ``result.json``."""

    config: dict[str, Any]
    status: str
    completed_rounds: int
    rounds: list[dict[str, Any]]
    wall_seconds: float = 0.0

    @property
    def accuracies(self) -> list[float]:
        """Test accuracy after each round (round 0 = initial model, when recorded)."""
        return [v for r in self.rounds if (v := _number(r.get("test-accuracy"))) is not None]

    @property
    def final_accuracy(self) -> float | None:
        acc = self.accuracies
        return acc[-1] if acc else None

    @property
    def best_accuracy(self) -> float | None:
        acc = [a for a in self.accuracies if not math.isnan(a)]
        return max(acc) if acc else None

    def to_json(self, include_rounds: bool = True) -> dict[str, Any]:
        out = {
            "config": self.config,
            "status": self.status,
            "completed-rounds": self.completed_rounds,
            "final-accuracy": self.final_accuracy,
            "best-accuracy": self.best_accuracy,
            "wall-seconds": self.wall_seconds,
        }
        if include_rounds:
            out["rounds"] = _jsonable(self.rounds)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            config=dict(data["config"]),
            status=str(data["status"]),
            completed_rounds=int(data["completed-rounds"]),
            rounds=list(data.get("rounds", [])),
            wall_seconds=float(data.get("wall-seconds", 0.0)),
        )


class RunStore:
    """Reads and writes one run's ``result.json`` and ``checkpoint.pt``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    @property
    def result_path(self) -> Path:
        return self.run_dir / RESULT_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    @property
    def rounds_path(self) -> Path:
        return self.run_dir / ROUNDS_FILE

    def append_round(self, row: dict[str, Any]) -> None:
        """Append one round's metrics to ``rounds.jsonl``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(_jsonable(row), allow_nan=False)
        with self.rounds_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def read_rounds(self, upto: int | None = None) -> list[dict[str, Any]]:
        """Rounds in ``rounds.jsonl`` (those <= ``upto``); a torn last line is ignored."""
        if not self.rounds_path.exists():
            return []
        rows: list[dict[str, Any]] = []
        with self.rounds_path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                if upto is None or int(row.get("round", 0)) <= upto:
                    rows.append(row)
        return rows

    def reset_rounds(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ``rounds.jsonl`` with exactly ``rows`` (used when starting or resuming)."""
        data = "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in rows)
        _atomic_write_bytes(self.rounds_path, lambda fh: fh.write(data.encode("utf-8")))

    def load_record(self) -> RunRecord | None:
        """The run's record, or None when there is none yet."""
        if not self.result_path.exists():
            return None
        with self.result_path.open(encoding="utf-8") as fh:
            try:
                data = json.load(fh)
                record = RunRecord.from_json(data)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{self.result_path}: unreadable run record ({err})") from err
        if "rounds" not in data:
            record.rounds = self.read_rounds(upto=record.completed_rounds)
        return record

    def write_record(self, record: RunRecord, include_rounds: bool | None = None) -> None:
        """Write ``result.json``; the rounds go in only once finished (unless told)."""
        if include_rounds is None:
            include_rounds = record.status == "finished"
        payload = record.to_json(include_rounds=include_rounds)
        data = json.dumps(payload, indent=1, allow_nan=False).encode("utf-8")
        _atomic_write_bytes(self.result_path, lambda fh: fh.write(data))

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        payload = {
            "round": checkpoint.round,
            "arrays": {k: v.detach().cpu() for k, v in checkpoint.arrays.items()},
            "optimizer_state": checkpoint.optimizer_state,
            "identity": checkpoint.identity,
            "rng": checkpoint.rng,
        }
        _atomic_write_bytes(self.checkpoint_path, lambda fh: torch.save(payload, fh))

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or None when there is none."""
        if not self.checkpoint_path.exists():
            return None
        payload = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        return Checkpoint(
            round=int(payload["round"]),
            arrays=dict(payload["arrays"]),
            optimizer_state=dict(payload["optimizer_state"]),
            identity=dict(payload["identity"]),
            rng=dict(payload.get("rng", {})),
        )


class RunLock:
    """An exclusive lock on a run directory (``lock`` file holding the owner's pid), so that two
    runners never write the same run; a lock left by a dead process is taken over."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise RuntimeError(
                        f"{self.path.parent} is being run by process {owner}; wait for it, or "
                        f"delete {self.path} if that process is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise RuntimeError(f"could not lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def identity_json(cfg: RunConfig) -> dict[str, Any]:
    """The run's identity as stored in records (JSON round-trip, so comparisons are exact)."""
    return json.loads(json.dumps(cfg.identity(), sort_keys=True))


def check_same_run(stored: dict[str, Any], cfg: RunConfig, where: Path) -> None:
    """Refuse to resume a run whose stored identity differs from ``cfg``'s."""
    current = identity_json(cfg)
    if stored != current:
        diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ValueError(
            f"{where} holds a different run ({details}); use another results directory or "
            f"run name, or delete it to start over"
        )


def run_status(cfg: RunConfig) -> tuple[str, int]:
    """``("new", 0)``, ``("partial", k)`` (k rounds done) or ``("finished", k)`` for ``cfg``."""
    store = RunStore(cfg.run_dir)
    record = store.load_record()
    if record is None:
        ckpt_round = 0
        if store.checkpoint_path.exists():
            ckpt = store.load_checkpoint()
            ckpt_round = ckpt.round if ckpt is not None else 0
        return ("partial", ckpt_round) if ckpt_round else ("new", 0)
    check_same_run(_identity_from_record(record), cfg, store.result_path)
    if record.completed_rounds >= cfg.num_rounds and record.status == "finished":
        return "finished", record.completed_rounds
    return ("partial", record.completed_rounds) if record.completed_rounds else ("new", 0)


def _identity_from_record(record: RunRecord) -> dict[str, Any]:
    return identity_json(RunConfig.from_flower(record.config))


def load_records(results_dir: str | Path) -> dict[str, RunRecord]:
    """All run records under ``results_dir``, keyed by run name (path relative to it)."""
    root = Path(results_dir)
    out: dict[str, RunRecord] = {}
    for path in sorted(root.rglob(RESULT_FILE)):
        record = RunStore(path.parent).load_record()
        if record is not None:
            out[str(path.parent.relative_to(root))] = record
    return out
