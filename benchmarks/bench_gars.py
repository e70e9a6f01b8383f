"""Speed of the flwr_byz.gars rules next to Flower's own built-ins on the same inputs.

Usage: ``python benchmarks/bench_gars.py [--quick] [--device cpu|cuda] [--repeats R]``.
Every rule at n in {25, 51}, d in {1e5, 1e6} (``--quick``: d = 1e5 only), float32, f at the rule's
maximum (``Rule.max_f``; Brute at f = 2, since C(25, 13) = 5e6 subsets at its maximum is refused).
Flower 1.41's Message-API helpers (``flwr.serverapp.strategy``) run on the same rows, as their
strategies call them: Krum / Multi-Krum = ``select_multikrum`` (+ ``aggregate_arrayrecords``),
Bulyan = ``select_multikrum(theta)`` + ``np.median`` + ``aggregate_n_closest_weights``,
median = ``np.median`` of the stacked layers (FedMedian), trimmed mean = ``fedtrimmedavg.trim_mean``
with beta = f / n. Times are medians of repeated runs, in seconds; a markdown table is printed.

``--ratios``: every rule, the bare Gram product ``x @ x.T`` and one streaming read (``x.sum()``)
interleaved in one loop; prints each rule's time over the median's and over the Gram product's.
``--memory``: each rule in a fresh subprocess (1 thread): peak resident memory (VmHWM) after the
rule minus the peak after allocating the input, over the input's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    """The benchmark's (n, d) float32 input, built row by row (no (n, d) temporaries)."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=generator) * 0.05
    x = torch.empty(n, d)
    for i in range(n):
        torch.randn(d, generator=generator, out=x[i]).mul_(0.01).add_(common)
    return x


def _ratio_times(x: torch.Tensor, rules: list[str], repeats: int) -> dict[str, tuple[float, float]]:
    n = x.shape[0]
    fns: dict[str, Callable[[], object]] = {"read": lambda: x.sum(), "gram": lambda: x @ x.T}
    for name in rules:
        f = _f_for(name, n)
        fns[name] = lambda name=name, f=f: gars.get(name).fn(x, f)
    return _time_interleaved(fns, repeats, lambda: None)


def _ratios(rules: list[str], sizes: list[tuple[int, int]], repeats: int | None) -> None:
    """Each rule's time over the coordinate-wise median's and over the bare Gram product's."""
    print("| rule | n | d | f | med s | / median | / Gram |")
    print("|---|---|---|---|---|---|---|")
    for n, d in sizes:
        x = _rows(n, d, n + d)
        times = _ratio_times(x, rules, repeats or (5 if d <= 100_000 else 3))
        median = times["median"][0] if "median" in times else float("nan")
        gram = times["gram"][0]
        for name, (value, _) in times.items():
            f = _f_for(name, n) if name in rules else "-"
            print(
                f"| {name} | {n} | {d:.0e} | {f} | {value:.4f} | {value / median:.2f} "
                f"| {value / gram:.2f} |"
            )


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _memory_child(name: str, n: int, d: int, track: bool = False) -> None:
    """Run in a fresh process: print the JSON peak memory of one rule over its input
    (``track``: ``Rule.aggregate``, with participation, as the strategies call it)."""
    torch.set_num_threads(1)
    x = _rows(n, d, n + d)
    base = _peak_bytes()
    start = time.perf_counter()
    rule = gars.get(name)
    rule.aggregate(x, _f_for(name, n)) if track else rule.fn(x, _f_for(name, n))
    seconds = time.perf_counter() - start
    extra = _peak_bytes() - base
    print(json.dumps({"extra": extra, "input": x.numel() * x.element_size(), "s": seconds}))


def _memory(rules: list[str], sizes: list[tuple[int, int]], track: bool = False) -> None:
    """Peak extra memory of each rule over its input, one fresh subprocess per case."""
    print("| rule | n | d | input GB | peak extra GB | extra / input | s (1 run) |")
    print("|---|---|---|---|---|---|---|")
    for n, d in sizes:
        for name in rules:
            case = f"{name},{n},{d}" + (",track" if track else "")
            child = [sys.executable, __file__, "--memory-child", case]
            done = subprocess.run(child, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"| {name} | {n} | {d:.0e} | failed: {done.stderr.strip()[-200:]} |")
                continue
            got = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"| {name} | {n} | {d:.0e} | {got['input'] / 1e9:.2f} | {got['extra'] / 1e9:.3f} "
                f"| {got['extra'] / got['input']:.3f} | {got['s']:.2f} |"
            )


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
    parser.add_argument("--ratios", action="store_true", help="rule / median, rule / Gram")
    parser.add_argument("--memory", action="store_true", help="peak extra memory / input")
    parser.add_argument("--track", action="store_true", help="--memory of Rule.aggregate")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, n, d, *track = args.memory_child.split(",")
        _memory_child(name, int(n), int(float(d)), bool(track))
        return
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rules = args.rules.split(",")
    dims = [100_000] if args.quick else [100_000, 1_000_000]
    if args.d:
        dims = [int(float(value)) for value in args.d.split(",")]
    sizes = [(int(n), d) for d in dims for n in args.n.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if args.memory:
        _memory(rules, sizes, args.track)
        return
    if args.ratios:
        _ratios(rules, sizes, args.repeats)
        return
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
