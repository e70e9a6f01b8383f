"""The runner's files are safe: an atomic run lock, checkpoints that never run code and name the
damaged file, and a summary that never calls a run finished elsewhere "failed"."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.experiment import build_experiment
from flwr_byz.simulations.results import Checkpoint, RunBusyError, RunLock, RunStore
from flwr_byz.simulations.runner import RunOutcome, outcome_row, run_experiment

ATTEMPTS = 30


def _attempt(run_dir: str, start: object, held: object, results: object) -> None:
    start.wait(60)
    try:
        lock = RunLock(run_dir).__enter__()
    except RunBusyError:
        results.put("busy")
        held.wait(60)
        return
    except BaseException as err:  # pragma: no cover - reported to the test
        results.put(f"error {err!r}")
        held.wait(60)
        return
    results.put("won")
    held.wait(60)  # hold the lock until every process has tried
    lock.__exit__(None, None, None)


def _race(run_dir: Path) -> list[str]:
    ctx = mp.get_context("fork")
    start, held = ctx.Barrier(ATTEMPTS), ctx.Barrier(ATTEMPTS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_attempt, args=(str(run_dir), start, held, results))
        for _ in range(ATTEMPTS)
    ]
    for proc in procs:
        proc.start()
    outcome = [results.get(timeout=90) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return outcome


@pytest.mark.parametrize("stale", [False, True])
def test_exactly_one_of_many_simultaneous_runners_gets_the_lock(tmp_path: Path, stale: bool):
    for attempt in range(4):  # a few races: the old lock lost about one in five
        run_dir = tmp_path / f"exp{attempt}" / "run"
        run_dir.mkdir(parents=True)
        if stale:
            (run_dir / "lock").write_text("999999999")  # left by a dead process
        outcome = _race(run_dir)
        assert outcome.count("won") == 1, outcome
        assert outcome.count("busy") == ATTEMPTS - 1, outcome
        assert not (run_dir / "lock").exists()  # released by its owner
        assert sorted(p.name for p in run_dir.iterdir()) == []  # no temporary files left


def test_lock_is_never_empty_and_release_keeps_a_foreign_lock(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    with lock:
        assert (tmp_path / "lock").read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunBusyError, match=f"process {os.getpid()}"):
            RunLock(tmp_path).__enter__()  # held by a live process (this one)
        (tmp_path / "lock").write_text(str(os.getppid()))  # someone else's now
    assert (tmp_path / "lock").read_text() == str(os.getppid())  # not removed by us


def _checkpoint() -> Checkpoint:
    return Checkpoint(
        round=2,
        arrays={"w": torch.ones(3)},
        optimizer_state={"momentum_buffer": None},
        identity={"rule": "krum", "seed": 1},
        rng={"numpy": np.random.default_rng(0).bit_generator.state, "np": np.arange(4)},
    )


def test_checkpoint_holds_only_plain_values(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save_checkpoint(_checkpoint())
    back = store.load_checkpoint()
    assert back is not None and back.round == 2 and torch.equal(back.arrays["w"], torch.ones(3))
    assert torch.equal(back.rng["np"], torch.arange(4))  # numpy arrays stored as tensors
    assert back.rng["numpy"]["state"]["state"] == _checkpoint().rng["numpy"]["state"]["state"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + str(Path(os.environ["EVIL_MARK"])),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_checkpoint_that_would_run_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    store = RunStore(tmp_path / "run")
    store.run_dir.mkdir()
    torch.save({"round": 1, "x": _Evil()}, store.checkpoint_path)  # a results folder from elsewhere
    with pytest.raises(ValueError, match=r"checkpoint\.pt: unreadable checkpoint"):
        store.load_checkpoint()
    store.checkpoint_path.write_bytes(pickle.dumps(_Evil()))  # legacy pickle, same refusal
    with pytest.raises(ValueError, match=r"checkpoint\.pt"):
        store.load_checkpoint()
    assert not mark.exists()


def test_a_damaged_checkpoint_names_the_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.save_checkpoint(_checkpoint())
    data = bytearray(store.checkpoint_path.read_bytes())
    data[-40] ^= 0xFF  # one flipped byte
    store.checkpoint_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checkpoint\.pt: damaged checkpoint \(sha256"):
        store.load_checkpoint()
    store.checkpoint_path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ValueError, match=r"checkpoint\.pt: damaged"):
        store.load_checkpoint()
    store.checkpoint_path.write_bytes(b"PK\x03\x04 not a zip")  # a torn file without header
    with pytest.raises(ValueError, match=r"checkpoint\.pt: unreadable checkpoint"):
        store.load_checkpoint()


def _exp(tmp_path: Path):
    spec = {"num-clients": 5, "num-byzantine": 1, "batch-size": 16, "num-rounds": 2}
    spec["rule"] = ["median", "krum"]
    return build_experiment(spec, name="sweep", results_dir=str(tmp_path))


def test_a_run_locked_by_another_runner_is_busy_not_failed(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    locked: RunConfig = exp.runs[1]
    locked.run_dir.mkdir(parents=True)
    (locked.run_dir / "lock").write_text(str(os.getppid()))  # another live runner has it
    outcomes = run_experiment(exp, progress=False, plots=False)  # no keep_going: no raise
    assert [o.action for o in outcomes] == ["ran", "busy"]
    import json

    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [row["status"] for row in summary] == ["ran", "busy"]


def test_summary_shows_a_run_finished_by_another_runner_as_finished(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    record = engines.run_inprocess(exp.runs[0])  # the other runner finished it meanwhile
    for action in ("busy", "failed"):
        row = outcome_row(RunOutcome(exp.runs[0], None, action, "RuntimeError: locked"))
        assert row["status"] == "finished"
        assert row["final-accuracy"] == record.final_accuracy and row["rounds"] == 2
    row = outcome_row(RunOutcome(exp.runs[1], None, "failed", "ValueError: boom"))
    assert row["status"] == "failed"  # a real failure stays one


def test_a_damaged_checkpoint_in_a_sweep_is_a_clear_error(tmp_path: Path) -> None:
    exp = _exp(tmp_path)
    damaged = RunStore(exp.runs[0].run_dir)
    damaged.run_dir.mkdir(parents=True)
    damaged.checkpoint_path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"rule=median/checkpoint\.pt: unreadable checkpoint"):
        run_experiment(exp, progress=False, plots=False)
    outcomes = run_experiment(exp, progress=False, plots=False, keep_going=True)
    assert [o.action for o in outcomes] == ["failed", "ran"]
    assert "checkpoint.pt" in str(outcomes[0].error)
