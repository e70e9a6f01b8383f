"""Results of one run on disk: a JSON record updated every round, and a checkpoint to resume.

Layout under ``<results-dir>/<run-name>/``:

- ``rounds.jsonl``: one JSON line of metrics per round, appended as rounds end (O(1) per round,
  so that 3000-round runs do not rewrite a growing file).
- ``result.json``: the run config, status (``running`` / ``finished``), completed rounds, final
  and best accuracy; once finished also every round's metrics. Written atomically every round.
- ``checkpoint.pt``: model arrays, server optimizer state (momentum buffer), RNG states and the
  round (a ``sha256`` header line, then torch.save bytes of tensors and plain values, loaded
  with ``weights_only=True``; written atomically after every round).

A run is *finished* when its record says so and covers at least the requested rounds with the
same identity (the fields that define what is computed); a finished run is never redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flwr_byz.schema import RunConfig

RESULT_FILE = "result.json"
ROUNDS_FILE = "rounds.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_MAGIC = b"flwr-byz-checkpoint sha256="


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
        """Write ``checkpoint.pt`` atomically: a sha256 header line, then ``torch.save`` bytes of
        tensors and plain values only (numpy arrays become tensors), loadable with
        ``weights_only=True``."""
        payload = _plain(
            {
                "round": checkpoint.round,
                "arrays": {k: v.detach().cpu() for k, v in checkpoint.arrays.items()},
                "optimizer_state": checkpoint.optimizer_state,
                "identity": checkpoint.identity,
                "rng": checkpoint.rng,
            }
        )
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        body = buffer.getvalue()
        header = CHECKPOINT_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n"
        _atomic_write_bytes(self.checkpoint_path, lambda fh: fh.write(header + body))

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or None when there is none; a damaged or foreign file gives a
        ``ValueError`` naming it (never runs code from it: ``weights_only=True``)."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        data = path.read_bytes()
        body = data
        if data.startswith(CHECKPOINT_MAGIC):
            line, sep, body = data.partition(b"\n")
            digest = line[len(CHECKPOINT_MAGIC) :].decode("ascii", "replace")
            if not sep or hashlib.sha256(body).hexdigest() != digest:
                raise ValueError(
                    f"{path}: damaged checkpoint (sha256 mismatch); delete it (and "
                    f"{self.result_path.name}) to start the run over"
                )
        try:
            payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
            return Checkpoint(
                round=int(payload["round"]),
                arrays=dict(payload["arrays"]),
                optimizer_state=dict(payload["optimizer_state"]),
                identity=dict(payload["identity"]),
                rng=dict(payload.get("rng", {})),
            )
        except Exception as err:  # torch's unpickler raises many types for foreign files
            raise ValueError(
                f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err)[:300]}); only "
                f"tensors and plain values are loaded. Delete it to start the run over"
            ) from None


class RunBusyError(RuntimeError):
    """The run directory is locked by another live process."""


class RunLock:
    """An exclusive lock on a run directory (``lock`` file holding the owner's pid), so that two
    runners never write the same run; a lock left by a dead process is taken over.

    The pid is written to a private temporary file that is then hard-linked as ``lock``: the link
    fails when the lock exists, so exactly one process wins and the lock is never seen empty."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "lock"
        self._token = f"{os.getpid()} {uuid.uuid4().hex}"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lock.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self._token)
            for _ in range(5):
                try:
                    os.link(tmp, self.path)
                    return self
                except FileExistsError:
                    self._take_over_if_stale()
            raise RunBusyError(f"could not lock {self.path}")
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        """Remove the lock when its owner is dead (atomically: rename it away, check it is the
        one read, put it back otherwise); raise ``RunBusyError`` when a live process holds it."""
        content = self._read(self.path)
        owner = _pid(content)
        if content is None:
            return  # it went away meanwhile: try again
        if owner is not None and _alive(owner):
            raise RunBusyError(
                f"{self.path.parent} is being run by process {owner}; wait for it, or "
                f"delete {self.path} if that process is gone"
            )
        aside = self.path.with_name(f".lock.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if self._read(aside) != content:  # another process took it over meanwhile: give it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            raise RunBusyError(f"{self.path.parent} is being run by another process")
        aside.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if self._read(self.path) == self._token:  # never remove another process's lock
            self.path.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def _owner(self) -> int | None:
        return _pid(self._read(self.path))


def _pid(content: str | None) -> int | None:
    try:
        return int(str(content).split()[0])
    except (IndexError, ValueError):
        return None


def _plain(value: Any) -> Any:
    """Only what ``torch.load(weights_only=True)`` accepts: tensors, numbers, str, None, and
    dicts / lists / tuples of them (numpy arrays become tensors, numpy scalars Python numbers)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


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
