"""Steps per second of the MNIST setup on each engine, next to a plain PyTorch loop.

Setup (ALIE / Momentum papers): n = 51 workers, the 784-100-10 MLP (d = 79,510), 83 images per
gradient, gradient mode, average, no attack. One *step* = 51 mini-batch gradients + their
average + one SGD step. The plain loop does exactly that in one process; the engines also
serialise the model and the gradients into Flower records, check the replies, compute the round
metrics (variance-norm ratio, ...) and evaluate the model on the test split every round, so
their time is reported with and without that evaluation.

    python benchmarks/bench_engines.py [--steps 30] [--flower-steps 5] [--threads 1] [--profile]
                                       [--repeats 1] [--breakdown]

Numbers depend on the machine and its load; nothing here is asserted by the tests. On a shared
machine, ``--repeats R`` measures the plain loop and the inprocess engine R times, alternately,
and reports the medians and the median of the R paired ratios (each pair ran under about the
same load). ``--breakdown`` times the parts of a round of each engine (in process: the
ClientApp's gradient, decoding and encoding, the strategy, the checkpoint; Flower: the waits of
its two 0.1 s polling loops, the Ray calls and the ServerApp's own work).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import statistics
import tempfile
import threading
import time

import torch

from flwr_byz import data, models
from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.server_app import quiet_flower

N, BATCH, LR = 51, 83, 0.1


def plain_loop(steps: int, seed: int = 1) -> float:
    """Steps per second of the same math in one process (no Flower, no records)."""
    split = data.load_dataset("mnist5k", seed=seed)
    model = models.build("mlp", seed=seed)
    params = list(model.parameters())
    indices = torch.arange(split.train_y.numel())
    times = []
    for step in range(steps):
        start = time.perf_counter()
        grads = []
        for worker in range(N):
            picks = data.sample_batch(indices, BATCH, seed, worker, step + 1)
            model.zero_grad(set_to_none=True)
            loss = models.loss_fn(model(split.train_x[picks]), split.train_y[picks])
            loss.backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
        update = torch.stack(grads).mean(dim=0)
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= LR * update[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times[1:] if len(times) > 1 else times)


def evaluation_seconds(seed: int = 1, repeats: int = 5) -> float:
    """Seconds of one centralised evaluation (the engines do one per round)."""
    split = data.load_dataset("mnist5k", seed=seed)
    model = models.build("mlp", seed=seed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        models.evaluate(model, split.test_x, split.test_y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_steps_per_second(engine: str, steps: int, threads: int) -> float:
    """Median per-round wall time of a run on ``engine`` (start-up excluded), as steps/s."""
    with tempfile.TemporaryDirectory() as tmp:
        record = engines.run(_cfg(tmp, steps), engine=engine, threads=threads)
        seconds = [r["round-seconds"] for r in record.rounds[1:]]
    return 1.0 / statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def _cfg(tmp: str, steps: int) -> RunConfig:
    return RunConfig(
        num_clients=N, num_byzantine=0, rule="average", attack="none", batch_size=BATCH,
        learning_rate=LR, num_rounds=steps, seed=1, results_dir=tmp, run_name="bench/run",
    )  # fmt: skip


class _Timer:
    """Wall time spent in methods patched with :meth:`wrap` (per name), restored by ``undo``."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self._undo: list[tuple[object, str, object]] = []
        self._lock = threading.Lock()

    def wrap(self, owner: object, name: str, label: str | None = None) -> None:
        original = getattr(owner, name)
        spans = self.spans.setdefault(label or name, [])

        @functools.wraps(original)
        def timed(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    spans.append((start, time.perf_counter()))

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def undo(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def per_round(self, name: str, rounds: int) -> float:
        """Milliseconds per round spent in ``name``."""
        return 1e3 * sum(end - start for start, end in self.spans.get(name, [])) / rounds


def inprocess_breakdown(steps: int, threads: int) -> dict[str, float]:
    """Milliseconds per round of an in-process run, by part (first round excluded)."""
    from flwr_byz.clients import app as client_app
    from flwr_byz.inprocess import InProcessGrid
    from flwr_byz.simulations.results import RunStore
    from flwr_byz.strategy.message_api import RobustStrategy

    timer = _Timer()
    timer.wrap(InProcessGrid, "send_and_receive", "messages (grid)")
    timer.wrap(client_app, "handle_train", "ClientApp train")
    timer.wrap(client_app, "honest_update", "honest gradient")
    timer.wrap(client_app, "_arrays_state", "decode the model")
    timer.wrap(client_app, "_reply", "encode the reply")
    timer.wrap(RobustStrategy, "aggregate_train", "strategy aggregate_train")
    timer.wrap(RunStore, "save_checkpoint", "checkpoint")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            record = engines.run(_cfg(tmp, steps + 1), engine="inprocess", threads=threads)
    finally:
        timer.undo()
    rows = {"round": 1e3 * sum(r["round-seconds"] for r in record.rounds[1:]) / (steps + 1)}
    rows.update({name: timer.per_round(name, steps + 1) for name in timer.spans})
    return rows


def flower_breakdown(steps: int, threads: int) -> dict[str, float]:
    """Where a Flower-engine round goes (ms, medians over rounds 2..): the wait until the first
    ClientApp call starts (the SuperLink's 0.1 s message sweep), the span of the n calls on the
    Ray workers, the wait after the last one (the grid's 0.1 s reply poll), the rest of the
    round (ServerApp), and per call the median Ray round trip (message and Context to an
    actor, the ClientApp, reply and Context back)."""
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.superlink.grid import inmemory_grid

    timer = _Timer()
    timer.wrap(raybackend.RayBackend, "process_message", "call")
    timer.wrap(inmemory_grid.InMemoryGrid, "send_and_receive", "round trip")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            record = engines.run(_cfg(tmp, steps + 1), engine="flower", threads=threads)
    finally:
        timer.undo()
    calls = sorted(timer.spans["call"])
    rows = []
    for start, end in timer.spans["round trip"]:
        inside = [c for c in calls if c[0] >= start and c[1] <= end]
        if len(inside) < N:
            continue  # the role query or a partial wave
        first, last = inside[0][0], max(c[1] for c in inside)
        rows.append(
            {
                "wait for the first call": first - start,
                f"{N} ClientApp calls (2 workers)": last - first,
                "wait after the last call": end - last,
                "call (median)": statistics.median(c[1] - c[0] for c in inside),
                "calls summed": sum(c[1] - c[0] for c in inside),
                "send_and_receive": end - start,
            }
        )
    seconds = [r["round-seconds"] for r in record.rounds if r.get("round", 0) >= 1]
    rows = rows[-len(seconds) :]  # one train wave per round; before them, the role query
    for row, round_seconds in zip(rows, seconds, strict=True):
        row["round"] = round_seconds
        row["rest of the round (ServerApp)"] = round_seconds - row["send_and_receive"]
    rows = rows[1:]  # the first round warms up
    return {key: 1e3 * statistics.median(row[key] for row in rows) for key in rows[0]}


def profile_inprocess(steps: int, threads: int, top: int = 25) -> str:
    """cProfile of an in-process run, sorted by cumulative time."""
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(tmp, steps)
        torch.set_num_threads(threads)
        profiler.enable()
        engines.run(cfg, engine="inprocess", threads=threads)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--flower-steps", type=int, default=5, help="0 skips the Flower engine")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--breakdown", action="store_true", help="time per round by part (both engines)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternate plain/inprocess runs (shared machines)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_flower()
    print(
        f"MNIST setup: n={N}, d={models.num_parameters(models.build('mlp'))}, batch={BATCH}, "
        f"gradient mode, average; torch threads={args.threads}"
    )
    pairs = []
    for _ in range(max(1, args.repeats)):
        pairs.append(
            (plain_loop(args.steps), engine_steps_per_second("inprocess", args.steps, args.threads))
        )
    plain = statistics.median(p for p, _ in pairs)
    inproc = statistics.median(e for _, e in pairs)
    evaluation = evaluation_seconds()
    print(f"plain PyTorch loop : {plain:8.2f} steps/s")
    inproc_no_eval = 1.0 / max(1e-9, 1.0 / inproc - evaluation)
    print(
        f"inprocess engine   : {inproc:8.2f} steps/s  (plain/inprocess = {plain / inproc:.2f}x; "
        f"without the per-round evaluation of {evaluation * 1e3:.1f} ms: "
        f"{plain / inproc_no_eval:.2f}x)"
    )
    if len(pairs) > 1:
        ratios = sorted(p / e for p, e in pairs)
        print(
            f"paired plain/inprocess over {len(pairs)} repeats: median "
            f"{statistics.median(ratios):.2f}x (min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x)"
        )
    if args.flower_steps:
        plain_now = plain_loop(args.steps)  # paired with the Flower run that follows
        flower = engine_steps_per_second("flower", args.flower_steps, args.threads)
        print(
            f"flower engine (Ray): {flower:8.2f} steps/s  (plain/flower = {plain / flower:.2f}x; "
            f"paired with a plain run just before: {plain_now / flower:.2f}x)"
        )
    if args.breakdown:
        print("in-process round, ms per round:")
        for name, ms in inprocess_breakdown(min(args.steps, 10), args.threads).items():
            print(f"  {name:32s} {ms:8.1f}")
        if args.flower_steps:
            print("flower round, ms (medians over rounds):")
            for name, ms in flower_breakdown(args.flower_steps, args.threads).items():
                print(f"  {name:32s} {ms:8.1f}")
    if args.profile:
        print(profile_inprocess(min(args.steps, 10), args.threads))


if __name__ == "__main__":
    main()
