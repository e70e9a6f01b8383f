"""Per-round wall time of a SuperNode deployment: a fresh ClientApp process per message (Flower's
default, `--isolation subprocess`) vs one long-lived ClientApp executor per SuperNode
(`--isolation process` + `python -m flwr_byz.clients.warm_superexec`), in the same script run.

    python benchmarks/bench_supernodes.py                     # 4 nodes, 3 rounds, both modes
    python benchmarks/bench_supernodes.py --rounds 5 --modes warm
    python benchmarks/bench_supernodes.py --keep              # keep the logs (path printed)

Each mode starts its own SuperLink and SuperNodes on 127.0.0.1 (free ports; the process harness
of `tests/integration/harness.py`), submits the project's app with `flwr run` (MLP on MNIST-5k,
median, no attack), waits for `flwr ls` to say `finished:completed`, reads the ServerApp's
`rounds.jsonl` (`round-seconds`: one round's messages, aggregation and central evaluation) and
stops every process it started by PID (SIGTERM, then SIGKILL). Logs, FLWR_HOMEs, the app copy and
the results live under one temporary folder outside the work tree, removed at the end (`--keep`
leaves it). Timings on a shared machine are noisy: compare the modes of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.integration.harness import (  # noqa: E402
    Federation,
    ProcessHarness,
    flower_env,
    free_port,
    missing_flower_binaries,
)
from tests.integration.test_deployment import (  # noqa: E402
    NO_ATTACK,
    byzantine_run_config,
    project_app,
)

MODES = ("subprocess", "warm")


def run_config(num_nodes: int, rounds: int, results: Path) -> dict[str, Any]:
    """The deployment tests' config without an attacker (median over honest nodes)."""
    return byzantine_run_config(num_nodes, rounds, results, **NO_ATTACK, **{"run-name": "bench"})


def measure(mode: str, root: Path, num_nodes: int, rounds: int, timeout: float) -> dict[str, Any]:
    """One deployment in `mode`, started and stopped here; its timings."""
    workdir = root / mode
    workdir.mkdir(parents=True)
    harness = ProcessHarness(workdir=workdir, env=flower_env(workdir / "flwr_home"))
    federation = Federation(
        harness=harness,
        connection="bench",
        superlink_port=free_port(),
        warm_clientapps=mode == "warm",
    )
    try:
        started = time.perf_counter()
        federation.start_superlink()
        for partition_id in range(num_nodes):
            federation.start_supernode(partition_id, num_nodes)
        federation.wait_for_supernodes()
        ready = time.perf_counter()
        config = run_config(num_nodes, rounds, workdir / "results")
        run_id = federation.run(project_app(workdir / "app", config), config)
        status = federation.wait_for_run(run_id, timeout=timeout)
        finished = time.perf_counter()
        if status != "finished:completed":
            raise RuntimeError(f"{mode}: run ended {status}\n{federation.run_log(run_id)}")
        rows = [
            json.loads(line)
            for line in (workdir / "results" / "bench" / "rounds.jsonl").read_text().splitlines()
        ]
    finally:
        harness.stop_all()
    leftovers = harness.leftovers()
    if leftovers:
        raise RuntimeError(f"{mode}: processes survived the stop: {leftovers}")
    per_round = [float(row["round-seconds"]) for row in rows if row["round"] >= 1]
    return {
        "mode": mode,
        "startup-s": ready - started,
        "run-s": finished - ready,
        "round-s": per_round,
        "median-round-s": statistics.median(per_round),
        "final-accuracy": rows[-1].get("test-accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated: " + ",".join(MODES)
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="s per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    modes = [mode for mode in args.modes.split(",") if mode]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}")
    if missing := missing_flower_binaries():
        raise SystemExit(f"Flower executables not on PATH: {', '.join(missing)}")

    root = Path(tempfile.mkdtemp(prefix="flwr-byz-bench-supernodes-"))
    results = []
    try:
        for mode in modes:
            print(f"{mode}: {args.nodes} SuperNodes, {args.rounds} rounds ...", flush=True)
            results.append(measure(mode, root, args.nodes, args.rounds, args.timeout))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if args.keep:
            print(f"logs kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.nodes} SuperNodes, MLP on MNIST-5k, {args.rounds} rounds (seconds)")
    print("| mode | startup | run (submit to finished) | per round (median) | rounds |")
    print("|---|---|---|---|---|")
    for r in results:
        rounds = ", ".join(f"{s:.1f}" for s in r["round-s"])
        print(
            f"| {r['mode']} | {r['startup-s']:.1f} | {r['run-s']:.1f} | "
            f"{r['median-round-s']:.1f} | {rounds} |"
        )
    by_mode = {r["mode"]: r for r in results}
    if set(MODES) <= set(by_mode):
        ratio = by_mode["subprocess"]["median-round-s"] / by_mode["warm"]["median-round-s"]
        print(f"per-round speed-up, warm vs subprocess: {ratio:.1f}x")


if __name__ == "__main__":
    main()
