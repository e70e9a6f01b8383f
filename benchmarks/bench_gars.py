"""Speed of the flwr_byz.gars rules next to Flower's own built-ins on the same inputs.

Usage: ``python benchmarks/bench_gars.py [--quick] [--device cpu|cuda] [--repeats R]``.
Every rule at n in {25, 51}, d in {1e5, 1e6} (``--quick``: d = 1e5 only), float32, f at the rule's
maximum (``Rule.max_f``; Brute at f = 2, since C(25, 13) = 5e6 subsets at its maximum is refused).
Flower 1.41's Message-API helpers (``flwr.serverapp.strategy``) run on the same rows, as their
strategies call them: Krum / Multi-Krum = ``select_multikrum`` (+ ``aggregate_arrayrecords``),
Bulyan = ``select_multikrum(theta)`` + ``np.median`` + ``aggregate_n_closest_weights``,
median = ``np.median`` of the stacked layers (FedMedian), trimmed mean = ``fedtrimmedavg.trim_mean``
with beta = f / n. Times are medians of repeated runs, in seconds; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from flwr_byz import gars


def _flower_builtins(rows: np.ndarray) -> dict[str, Callable[[int], object]]:
    """Flower's equivalents, keyed by our rule name, each taking f."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    contents = [
        RecordDict({"arrays": ArrayRecord([row]), "metrics": MetricRecord({"num-examples": 1})})
        for row in rows
    ]
    n = len(rows)

    def krum(f: int) -> object:
        return aggregate_arrayrecords(select_multikrum(contents, f, 1), "num-examples")

    def multi_krum(f: int) -> object:
        return aggregate_arrayrecords(select_multikrum(contents, f, n - f), "num-examples")

    def bulyan(f: int) -> object:
        theta = n - 2 * f
        chosen = select_multikrum(contents, f, theta)
        arrays = [c["arrays"].to_numpy_ndarrays() for c in chosen]
        medians = [np.median(layer, axis=0) for layer in zip(*arrays, strict=True)]
        return aggregate_n_closest_weights(medians, arrays, theta - 2 * f)

    def median(f: int) -> object:
        return np.median(np.stack(list(rows)), axis=0)

    def trimmed_mean(f: int) -> object:
        return trim_mean(np.stack(list(rows)), f / n)

    return {
        "krum": krum,
        "multi_krum": multi_krum,
        "bulyan": bulyan,
        "median": median,
        "trimmed_mean": trimmed_mean,
    }


def _time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, tuple[float, float]]:
    """(median, min) seconds of each callable, run round-robin so that load drifts hit all alike."""
    times: dict[str, list[float]] = {key: [] for key in fns}
    for fn in fns.values():  # warm-up
        fn()
    sync()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - start)
    return {key: (statistics.median(values), min(values)) for key, values in times.items()}


def _f_for(name: str, n: int) -> int:
    return 2 if name == "brute" else gars.get(name).max_f(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e5 only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="runs per case (median)")
    parser.add_argument("--rules", default=",".join(gars.NAMES), help="comma-separated rules")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's built-ins")
    parser.add_argument("--n", default="25,51", help="comma-separated numbers of inputs")
    parser.add_argument(
        "--d", default=None, help="comma-separated dimensions (default per --quick)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rules = args.rules.split(",")
    dims = [100_000] if args.quick else [100_000, 1_000_000]
    if args.d:
        dims = [int(float(value)) for value in args.d.split(",")]
    sizes = [(int(n), d) for d in dims for n in args.n.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print("| rule | n | d | f | ours med (min) s | Flower med (min) s | ours/Flower med (min) |")
    print("|---|---|---|---|---|---|---|")
    bulyan_rows = []
    for n, d in sizes:
        repeats = args.repeats or (5 if d <= 100_000 else 3)
        generator = torch.Generator().manual_seed(n + d)
        common = torch.randn(d, generator=generator) * 0.05
        rows = common + 0.01 * torch.randn(n, d, generator=generator)
        x = rows.to(device)
        flower = {} if args.no_flower else _flower_builtins(rows.numpy())
        for name in rules:
            f = _f_for(name, n)
            fns: dict[str, Callable[[], object]] = {
                "ours": lambda name=name, f=f, x=x: gars.get(name).fn(x, f)
            }
            if name in flower:
                fns["flower"] = lambda name=name, f=f, fl=flower: fl[name](f)
            if name == "bulyan":
                fns["krum"] = lambda f=f, x=x: gars.krum(x, f)
            times = _time_interleaved(fns, repeats, sync)
            ours, ours_min = times["ours"]
            ours_cell = f"{ours:.3f} ({ours_min:.3f})"
            if name in flower:
                theirs, theirs_min = times["flower"]
                flower_cell = f"{theirs:.3f} ({theirs_min:.3f})"
                ratio = f"{ours / theirs:.2f} ({ours_min / theirs_min:.2f})"
            else:
                flower_cell = ratio = "-"
            note = " (f=2: at f=max C(n, n-f) > 1e5 subsets is refused)" if name == "brute" else ""
            print(f"| {name}{note} | {n} | {d:.0e} | {f} | {ours_cell} | {flower_cell} | {ratio} |")
            if name == "bulyan":
                bulyan_rows.append((n, d, f, times["ours"], times["krum"]))
    for n, d, f, (bulyan_med, bulyan_min), (krum_med, krum_min) in bulyan_rows:
        print(
            f"Bulyan/Krum at n={n}, d={d:.0e}, f={f}: median {bulyan_med:.3f} / {krum_med:.3f} = "
            f"{bulyan_med / krum_med:.2f}; min {bulyan_min:.3f} / {krum_min:.3f} = "
            f"{bulyan_min / krum_min:.2f}"
        )


if __name__ == "__main__":
    main()
