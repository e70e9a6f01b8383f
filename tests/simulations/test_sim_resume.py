"""Results, checkpoints and resume: finished runs are never redone, interrupted ones continue
exactly (model, server momentum, learning-rate schedule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.experiment import build_experiment
from flwr_byz.simulations.results import (
    Checkpoint,
    RunRecord,
    RunStore,
    load_records,
    run_status,
)
from flwr_byz.simulations.runner import run_experiment
from flwr_byz.simulations.server_app import round_listener


def tiny(tmp_path: Path, **changes) -> RunConfig:
    """A few-second run: 5 clients, 1 sign-flipper, server momentum and a fading lr."""
    base = {
        "num_clients": 5,
        "num_byzantine": 1,
        "rule": "trimmed_mean",
        "attack": "sign_flip",
        "batch_size": 16,
        "learning_rate": 0.2,
        "lr_schedule_r": 3.0,
        "momentum": 0.9,
        "momentum_place": "server",
        "num_rounds": 5,
        "seed": 3,
        "results_dir": str(tmp_path),
        "run_name": "exp/run",
    }
    base.update(changes)
    return RunConfig(**base)


def accuracies(record: RunRecord) -> list[float]:
    return [r["test-accuracy"] for r in record.rounds]


class Interrupt(Exception):
    pass


def interrupt_after(k: int):
    def listener(cfg: RunConfig, round_number: int, metrics: dict) -> None:
        if round_number == k:
            raise Interrupt(f"injected after round {k}")

    return listener


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunRecord, dict]:
    """The uninterrupted 5-round run and its final model."""
    root = tmp_path_factory.mktemp("reference")
    record = engines.run_inprocess(tiny(root))
    final = RunStore(tiny(root).run_dir).load_checkpoint()
    assert final is not None
    return record, final.arrays


def test_record_and_checkpoint_contents(reference, tmp_path: Path) -> None:
    record, arrays = reference
    assert record.status == "finished" and record.completed_rounds == 5
    assert [r["round"] for r in record.rounds] == [0, 1, 2, 3, 4, 5]
    # the learning-rate schedule of the Bulyan paper, eta_0 r / (t + r), t = round - 1
    for row in record.rounds[1:]:
        t = row["round"] - 1
        assert row["learning-rate"] == pytest.approx(0.2 * 3.0 / (t + 3.0), rel=1e-12)
    for key in ("test-loss", "variance-norm-ratio", "byzantine-influence", "agg-seconds"):
        assert all(key in row for row in record.rounds[1:]), key
    assert record.best_accuracy == max(accuracies(record))
    assert record.final_accuracy == accuracies(record)[-1]
    from flwr_byz import models

    assert list(arrays) == list(models.build("mlp").state_dict())
    assert record.rounds[-1]["test-accuracy"] != record.rounds[0]["test-accuracy"]  # it learnt


def test_interrupted_run_continues_exactly(reference, tmp_path: Path) -> None:
    ref_record, ref_arrays = reference
    cfg = tiny(tmp_path)
    with round_listener(interrupt_after(2)), pytest.raises(Interrupt):
        engines.run_inprocess(cfg)
    assert run_status(cfg) == ("partial", 2)
    store = RunStore(cfg.run_dir)
    ckpt = store.load_checkpoint()
    assert ckpt is not None and ckpt.round == 2
    assert ckpt.optimizer_state["momentum_buffer"] is not None  # server momentum saved

    seen: list[int] = []
    with round_listener(lambda c, t, m: seen.append(t)):
        record = engines.run_inprocess(cfg)
    assert seen == [3, 4, 5]  # only the missing rounds ran
    assert accuracies(record) == accuracies(ref_record)
    final = store.load_checkpoint()
    assert final is not None
    for key, value in ref_arrays.items():
        assert torch.equal(final.arrays[key], value), key


def test_more_rounds_later_equals_one_long_run(reference, tmp_path: Path) -> None:
    ref_record, ref_arrays = reference
    short = engines.run_inprocess(tiny(tmp_path, num_rounds=3))
    assert short.status == "finished" and short.completed_rounds == 3
    assert accuracies(short) == accuracies(ref_record)[:4]
    longer = engines.run_inprocess(tiny(tmp_path, num_rounds=5))
    assert accuracies(longer) == accuracies(ref_record)
    final = RunStore(tiny(tmp_path).run_dir).load_checkpoint()
    assert all(torch.equal(final.arrays[k], v) for k, v in ref_arrays.items())


def test_finished_run_is_never_redone(reference, tmp_path: Path) -> None:
    cfg = tiny(tmp_path, num_rounds=2)
    engines.run_inprocess(cfg)
    result = RunStore(cfg.run_dir).result_path
    before = result.read_bytes()
    seen: list[int] = []
    with round_listener(lambda c, t, m: seen.append(t)):
        again = engines.run_inprocess(cfg)
        fewer = engines.run_inprocess(cfg.replace(num_rounds=1))
    assert seen == []
    assert result.read_bytes() == before
    assert again.completed_rounds == fewer.completed_rounds == 2


def test_runner_skips_finished_and_resumes_partial(tmp_path: Path) -> None:
    spec = {
        "num-clients": 5,
        "num-byzantine": 1,
        "attack": "sign_flip",
        "batch-size": 16,
        "num-rounds": 3,
        "rule": ["median", "krum"],
    }
    exp = build_experiment(spec, name="sweep", results_dir=str(tmp_path))
    engines.run_inprocess(exp.runs[0])  # first run finished beforehand
    with round_listener(interrupt_after(1)), pytest.raises(Interrupt):
        engines.run_inprocess(exp.runs[1])  # second run interrupted after round 1
    outcomes = run_experiment(exp, progress=False, plots=False)
    assert [o.action for o in outcomes] == ["skipped", "resumed"]
    assert all(o.record is not None and o.record.completed_rounds == 3 for o in outcomes)
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [row["rule"] for row in summary] == ["median", "krum"]
    assert set(load_records(tmp_path)) == {"sweep/rule=median", "sweep/rule=krum"}


def test_a_different_run_in_the_same_place_is_refused(tmp_path: Path) -> None:
    engines.run_inprocess(tiny(tmp_path, num_rounds=1))
    with pytest.raises(ValueError, match="rule"):
        engines.run_inprocess(tiny(tmp_path, num_rounds=2, rule="median"))


def test_store_round_trip_and_atomic_files(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r")
    assert store.load_record() is None and store.load_checkpoint() is None
    ckpt = Checkpoint(
        round=4,
        arrays={"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        optimizer_state={"momentum_buffer": torch.ones(6, dtype=torch.float64)},
        identity={"rule": "krum"},
        rng={"torch": torch.get_rng_state()},
    )
    store.save_checkpoint(ckpt)
    back = store.load_checkpoint()
    assert back is not None and back.round == 4 and back.identity == {"rule": "krum"}
    assert torch.equal(back.arrays["w"], ckpt.arrays["w"])
    assert back.optimizer_state["momentum_buffer"].dtype == torch.float64
    rows = [{"round": r, "variance-norm-ratio": float("inf")} for r in range(5)]
    for row in rows:
        store.append_round(row)
    record = RunRecord(
        config=tiny(tmp_path).to_flower(), status="running", completed_rounds=3, rounds=rows[:4]
    )
    store.write_record(record)
    assert "rounds" not in json.loads(store.result_path.read_text())  # small while running
    assert [r["round"] for r in store.load_record().rounds] == [0, 1, 2, 3]
    with store.rounds_path.open("a") as fh:
        fh.write('{"round": 5, "torn')  # a crash mid-append
    assert len(store.read_rounds()) == 5
    record.status, record.completed_rounds, record.rounds = "finished", 4, rows
    store.write_record(record)
    data = json.loads(store.result_path.read_text())  # strict JSON: inf stored as a string
    assert data["rounds"][0]["variance-norm-ratio"] == "inf"
    assert [p.name for p in store.run_dir.iterdir() if p.name.startswith(".")] == []


def test_worker_momentum_run_resumes_exactly(tmp_path: Path) -> None:
    """With momentum at the workers the clients' G_{t-1} must survive the interruption too."""
    cfg = tiny(tmp_path / "a", momentum_place="worker", lr_schedule_r=0.0, num_rounds=4)
    reference = engines.run(cfg)
    interrupted = tiny(tmp_path / "b", momentum_place="worker", lr_schedule_r=0.0, num_rounds=4)
    with round_listener(interrupt_after(2)), pytest.raises(Interrupt):
        engines.run(interrupted)
    resumed = engines.run(interrupted)  # a fresh grid: fresh client contexts
    assert accuracies(resumed) == accuracies(reference)
    final_a = RunStore(cfg.run_dir).load_checkpoint().arrays
    final_b = RunStore(interrupted.run_dir).load_checkpoint().arrays
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert (interrupted.run_dir / "client-state").is_dir()


def test_a_run_locked_by_a_live_process_is_refused(tmp_path: Path) -> None:
    import os

    cfg = tiny(tmp_path, num_rounds=1)
    lock = cfg.run_dir / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(RuntimeError, match="being run by process"):
        engines.run_inprocess(cfg)
    lock.write_text("999999999")  # a dead owner: the stale lock is taken over
    assert engines.run_inprocess(cfg).completed_rounds == 1
    assert not lock.exists()


# ------------------------------------------------------------------ kills in a worker-momentum run


def worker_cfg(root: Path) -> RunConfig:
    return tiny(root, momentum_place="worker", lr_schedule_r=0.0, num_rounds=4)


@pytest.fixture(scope="module")
def worker_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict]:
    cfg = worker_cfg(tmp_path_factory.mktemp("worker-reference"))
    record = engines.run(cfg)
    return accuracies(record), RunStore(cfg.run_dir).load_checkpoint().arrays


def _kill_before_checkpoint(k: int, leave_temp: bool):
    """``save_checkpoint`` that dies at round ``k`` after the clients saved their state, without
    writing (``leave_temp``: after writing half a temporary file, as a SIGKILL mid-write)."""
    original = RunStore.save_checkpoint

    def save(self: RunStore, checkpoint: Checkpoint) -> None:
        if checkpoint.round == k:
            if leave_temp:
                (self.run_dir / f".{self.checkpoint_path.name}.dead.tmp").write_bytes(b"PK\x03")
            raise Interrupt(f"killed before checkpoint {k}")
        original(self, checkpoint)

    return save


@pytest.mark.parametrize(
    "point", ["before-checkpoint", "mid-checkpoint-write", "after-checkpoint", "twice"]
)
def test_worker_momentum_resume_is_exact_at_any_kill_point(
    worker_reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    ref_acc, ref_arrays = worker_reference
    cfg = worker_cfg(tmp_path)
    if point == "after-checkpoint":
        with round_listener(interrupt_after(2)), pytest.raises(Interrupt):
            engines.run(cfg)
    else:
        with monkeypatch.context() as patch:
            patch.setattr(
                RunStore,
                "save_checkpoint",
                _kill_before_checkpoint(2, point != "before-checkpoint"),
            )
            with pytest.raises(Interrupt):
                engines.run(cfg)
        assert run_status(cfg) == ("partial", 1)  # the clients are a round ahead of the server
        state = cfg.run_dir / "client-state"
        assert any(p.name.endswith("-round-2.npz") for p in state.iterdir())
        (state / ".momentum-partition-0-round-3.npz.dead.tmp").write_bytes(b"\x93NUM")
        if point == "twice":  # killed again, this time after the redone round's checkpoint
            with round_listener(interrupt_after(2)), pytest.raises(Interrupt):
                engines.run(cfg)
    resumed = engines.run(cfg)
    assert accuracies(resumed) == ref_acc
    final = RunStore(cfg.run_dir).load_checkpoint().arrays
    assert all(torch.equal(final[k], ref_arrays[k]) for k in ref_arrays)
    # only the last two rounds of client state are kept
    tags = sorted(
        int(p.stem.rsplit("-", 1)[1]) for p in (cfg.run_dir / "client-state").glob("*.npz")
    )
    assert set(tags) == {3, 4}
