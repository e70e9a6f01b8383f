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
``--byzfl``: ByzFL's aggregators (0.0.11: Krum, MultiKrum, Median, TrMean, Meamed, MDA = Brute,
GeometricMedian, CenteredClipping, Average) next to ours and to Flower's built-ins on the same
inputs, interleaved: ours / ByzFL, ours / Flower, and the max |ours - ByzFL| where the definitions
coincide (ours run with the matching options: ByzFL's Krum scores over n - f - 1 neighbours).
Then the geometric median against ByzFL's (3 Weiszfeld iterations from 0, nu = 0.1): ByzFL's
time and objective ``sum_i |z - x_i|``, ours stopped once its objective reaches ByzFL's, ours to
its own tolerance. ByzFL's package ``__init__`` imports its training stack (torchvision), so only
``byzfl/utils`` and ``byzfl/aggregators/aggregators.py`` are loaded (``--byzfl-path``: a wheel or
site directory holding ``byzfl``, else the installed one); without them the section is skipped.
``--byzfl`` also prints the rules and pre-aggregators beyond the seeds next to ByzFL's
(CenteredClipping at tau = 100 and at tau = median norm / 2 with L = 3, Clipping, ARC, NNM,
Bucketing; ByzFL 0.0.11 has no DnC or FLTrust), f = (n - 1) // 2.
``--memory --rules beyond``: the same kernels plus fltrust and dnc (``BEYOND``, ``BEYOND_OWN``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

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


def _load_byzfl(path: str | None) -> types.ModuleType:
    """ByzFL's ``aggregators`` module, loaded without running ``byzfl/__init__`` (which imports
    torchvision and its federated-training stack)."""
    if path:
        sys.path.insert(0, path)
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("byzfl is not installed (pip install --no-deps byzfl==0.0.11)")
    root = list(spec.submodule_search_locations)
    for name, where in (("byzfl", root), ("byzfl.utils", [str(Path(root[0]) / "utils")])):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = where
            sys.modules[name] = stub
    origin = Path(root[0]) / "aggregators" / "aggregators.py"
    loader = importlib.util.spec_from_file_location("byzfl_aggregators", origin)
    if loader is None or loader.loader is None:
        raise ImportError(f"cannot load {origin}")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    origin = Path(root[0]) / "aggregators" / "preaggregators.py"  # NNM, Bucketing, Clipping, ARC
    loader = importlib.util.spec_from_file_location("byzfl_preaggregators", origin)
    if loader is not None and loader.loader is not None and origin.exists():
        pre = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(pre)
        for name in ("NNM", "Bucketing", "Clipping", "ARC"):
            setattr(module, name, getattr(pre, name))
    return module


def _byzfl_peers(byzfl: types.ModuleType, x: torch.Tensor) -> dict[str, tuple]:
    """Our rule name -> (ByzFL call, matching call of ours or None, note), each taking f."""
    n = x.shape[0]
    small = x.numel() <= 1 << 24  # torch.quantile (ByzFL's median) refuses larger inputs
    as_median_input = x if small else x.numpy()

    def call(cls: str, data: object, **kwargs: object) -> Callable[[int], object]:
        return lambda f: getattr(byzfl, cls)(
            **kwargs, **({} if cls in ("Average", "Median") else {"f": f})
        )(data)

    return {
        "average": (call("Average", x), lambda f: gars.average(x, f), ""),
        "median": (
            call("Median", as_median_input),
            lambda f: gars.median(x, f),
            "" if small else "ByzFL on numpy (torch.quantile refuses > 2^24 values)",
        ),
        "trimmed_mean": (call("TrMean", x), lambda f: gars.trimmed_mean(x, f), ""),
        "meamed": (
            call("Meamed", as_median_input),
            lambda f: gars.meamed(x, f),
            "" if small else "ByzFL on numpy (torch.quantile refuses > 2^24 values)",
        ),
        "krum": (
            call("Krum", x),
            lambda f: gars.krum(x, f, neighbours=n - f - 1),
            "ByzFL scores over n - f - 1 neighbours (ours: n - f - 2); diff with neighbours=n-f-1",
        ),
        "multi_krum": (
            call("MultiKrum", x),
            lambda f: gars.multi_krum(x, f, m=n - f, neighbours=n - f - 1),
            "ByzFL: n - f - 1 neighbours, m = n - f; diff with those options",
        ),
        "brute": (call("MDA", x), lambda f: gars.brute(x, f), "ByzFL MDA"),
        "centered_clipping": (
            lambda f: byzfl.CenteredClipping()(x),
            lambda f: gars.centered_clipping(x, f),
            "tau = 100, L = 1, from 0",
        ),
        "geometric_median": (
            lambda f: byzfl.GeometricMedian()(x),
            None,
            "ByzFL: 3 iterations from 0, nu = 0.1 (not converged): see the section below",
        ),
    }


BEYOND = ("centered_clipping", "centered_clipping_tau", "clip", "arc", "nnm", "bucketing")
BEYOND_OWN = ("fltrust", "dnc")  # no ByzFL 0.0.11 peer (it has no FLTrust or DnC)


def _beyond_kernels(x: torch.Tensor) -> dict[str, tuple[Callable[[int], object], object, str]]:
    """Rules / pre-aggregators beyond the seeds: name -> (ours taking f, ByzFL factory or None,
    note). ``tau``/``c`` for the clipping cases: from the median row norm of ``x``, so that about
    half the rows are clipped (with tau = 100 nothing is clipped at these scales)."""
    from flwr_byz.gars import preaggregation as pre

    median_norm = float(pre._row_norms(x).median())  # float64, in column blocks
    tau, c = median_norm / 2, median_norm
    server = torch.zeros(x.shape[1], dtype=x.dtype)
    for row in x:  # the row mean, without the (n, d) temporary that x.mean(dim=0) makes
        server += row
    server /= x.shape[0]
    return {
        "centered_clipping": (
            lambda f: gars.centered_clipping(x, f),
            lambda byzfl, f: byzfl.CenteredClipping()(x),
            "tau = 100, L = 1, from 0 (no row clipped)",
        ),
        "centered_clipping_tau": (
            lambda f: gars.centered_clipping(x, f, tau=tau, L=3),
            lambda byzfl, f: byzfl.CenteredClipping(tau=tau, L=3)(x),
            "tau = median norm / 2, L = 3, from 0",
        ),
        "clip": (
            lambda f: pre.clip(x, f, c=c),
            lambda byzfl, f: byzfl.Clipping(c=c)(x.clone()),
            "c = median norm; ByzFL Clipping clips in place: timed on x.clone()",
        ),
        "arc": (
            lambda f: pre.arc(x, f),
            lambda byzfl, f: byzfl.ARC(f=f)(x.clone()),
            "ByzFL ARC clips in place: timed on x.clone()",
        ),
        "nnm": (
            lambda f: pre.nnm(x, f),
            lambda byzfl, f: byzfl.NNM(f=f)(x),
            "ByzFL: torch.cdist + a (n, n - f, d) gather",
        ),
        "bucketing": (
            lambda f: pre.bucketing(x, f, s=2, seed=0),
            lambda byzfl, f: (torch.manual_seed(0), byzfl.Bucketing(s=2)(x))[1],
            "s = 2; ByzFL's global-RNG torch.randperm seeded 0 = our seed 0 permutation",
        ),
        "fltrust": (lambda f: gars.fltrust(x, f, server_update=server), None, "g_0 = row mean"),
        "dnc": (lambda f: gars.dnc(x, f), None, "niters = 5, b = 10^4, c = 1, seed 0"),
    }


def _beyond_rows(byzfl: types.ModuleType, x: torch.Tensor, repeats: int) -> None:
    """One table row per kernel beyond the seeds with a ByzFL peer: ours / ByzFL, interleaved."""
    n, d = x.shape
    f = (n - 1) // 2  # centered clipping's maximum; the pre-aggregators run with the same f
    for name, (ours, theirs, note) in _beyond_kernels(x).items():
        if theirs is None:
            continue
        fns = {"ours": functools.partial(ours, f), "byzfl": functools.partial(theirs, byzfl, f)}
        times = _time_interleaved(fns, repeats, lambda: None)
        ours_out = torch.as_tensor(ours(f)).to(torch.float64)
        peer_out = torch.as_tensor(theirs(byzfl, f)).to(torch.float64)
        diff = float((ours_out - peer_out).abs().max())
        mine, peer = times["ours"][0], times["byzfl"][0]
        print(
            f"| {name} | {n} | {d:.0e} | {f} | {mine:.4f} | {peer:.4f} | {mine / peer:.2f} "
            f"| {diff:.2e} | {note} |"
        )


def _objective(x: torch.Tensor, z: torch.Tensor) -> float:
    """``sum_i |x_i - z|`` in float64, column block by column block."""
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    z = z.to(torch.float64)
    for start in range(0, x.shape[1], 1 << 16):
        part = x[:, start : start + (1 << 16)].to(torch.float64) - z[start : start + (1 << 16)]
        total += (part * part).sum(dim=1)
    return float(total.sqrt().sum())


def _byzfl_rows(byzfl: types.ModuleType, x: torch.Tensor, rules: list[str], repeats: int) -> None:
    """One table row per rule with a ByzFL peer: ours, ByzFL's and Flower's, interleaved."""
    n, d = x.shape
    peers = _byzfl_peers(byzfl, x)
    flower = _flower_builtins(x.numpy())
    for name in [*rules, "centered_clipping"]:
        if name not in peers:
            continue
        f = _f_for(name, n) if name in gars.NAMES else (n - 1) // 2
        theirs, matching, note = peers[name]
        ours = gars.get(name).fn if name in gars.NAMES else getattr(gars, name)
        fns: dict[str, Callable[[], object]] = {
            "ours": functools.partial(ours, x, f),
            "byzfl": functools.partial(theirs, f),
        }
        if name in flower:
            fns["flower"] = functools.partial(flower[name], f)
        times = _time_interleaved(fns, repeats, lambda: None)
        diff = "-"
        if matching is not None:
            ours_out = matching(f).to(torch.float64)
            peer_out = torch.as_tensor(np.asarray(theirs(f))).to(torch.float64)
            diff = f"{float((ours_out - peer_out).abs().max()):.2e}"
        mine, peer = times["ours"][0], times["byzfl"][0]
        flow = times["flower"][0] if "flower" in times else float("nan")
        print(
            f"| {name} | {n} | {d:.0e} | {f} | {mine:.4f} | {peer:.4f} | {flow:.4f} "
            f"| {mine / peer:.2f} | {mine / flow:.2f} | {diff} | {note} |"
        )


def _byzfl_geometric_median(byzfl: types.ModuleType, x: torch.Tensor, repeats: int) -> None:
    """ByzFL's 3-iteration geometric median vs ours stopped at its objective vs ours converged."""
    from importlib import import_module

    geometric = import_module("flwr_byz.gars.geometric_median")
    n, d = x.shape
    f = _f_for("geometric_median", n)
    target = _objective(x, byzfl.GeometricMedian()(x))
    gram = geometric._centred_gram(x, None, geometric._median_center(x, None))
    reach_iterations = geometric.weiszfeld_coefficients(gram, 1e-8, 1e-7, 1000, target)[2]
    ours_iterations = geometric.weiszfeld_coefficients(gram, 1e-8, 1e-7, 1000)[2]
    del gram
    reach_fn = functools.partial(geometric._geometric_median_impl, x, f, objective=target)
    fns: dict[str, Callable[[], object]] = {
        "byzfl": functools.partial(byzfl.GeometricMedian(), x),
        "reach": reach_fn,
        "ours": functools.partial(gars.geometric_median, x, f),
    }
    times = _time_interleaved(fns, repeats, lambda: None)
    reach = _objective(x, reach_fn().vector)
    ours = _objective(x, gars.geometric_median(x, f))
    b, r, o = times["byzfl"][0], times["reach"][0], times["ours"][0]
    print(
        f"| {n} | {d:.0e} | {b:.4f} | {target:.7e} | {r:.4f} | {reach:.7e} | {reach_iterations} "
        f"| {o:.4f} | {ours:.7e} | {ours_iterations} | {r / b:.2f} | {o / b:.2f} |"
    )


def _byzfl_section(
    sizes: list[tuple[int, int]], rules: list[str], repeats: int | None, path: str | None
) -> None:
    """Ours / ByzFL / Flower on the same inputs (interleaved), then the geometric median."""
    try:
        byzfl = _load_byzfl(path)
    except Exception as error:  # any failure to load means: skip, saying why
        print(f"ByzFL skipped: cannot load its aggregators ({type(error).__name__}: {error})")
        return
    print(
        "| rule | n | d | f | ours s | ByzFL s | Flower s | ours/ByzFL | ours/Flower "
        "| max abs diff | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    inputs = [_rows(n, d, n + d) for n, d in sizes]
    for x in inputs:
        _byzfl_rows(byzfl, x, rules, repeats or (5 if x.shape[1] <= 100_000 else 3))
    print()
    print("Rules and pre-aggregators beyond the seeds, next to ByzFL's (f = (n - 1) // 2)")
    print("| kernel | n | d | f | ours s | ByzFL s | ours/ByzFL | max abs diff | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in inputs:
        _beyond_rows(byzfl, x, repeats or (5 if x.shape[1] <= 100_000 else 3))
    if "geometric_median" not in rules:
        return
    print()
    print("Geometric median: ByzFL (T = 3) / ours stopped at ByzFL's objective / ours converged")
    print(
        "| n | d | ByzFL s | objective | ours@ByzFL s | objective | iterations | ours s "
        "| objective | iterations | ours@ByzFL / ByzFL | ours / ByzFL |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in inputs:
        _byzfl_geometric_median(byzfl, x, repeats or (5 if x.shape[1] <= 100_000 else 3))


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
    if name in BEYOND or name in BEYOND_OWN:
        _beyond_kernels(x)  # its median norm (float64 of each row) before the baseline
    base = _peak_bytes()
    start = time.perf_counter()
    if name in BEYOND or name in BEYOND_OWN:
        _beyond_kernels(x)[name][0]((n - 1) // 2)
    else:
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
    parser.add_argument(
        "--rules", default=",".join(gars.NAMES), help="comma-separated rules (--memory: 'beyond')"
    )
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's built-ins")
    parser.add_argument("--n", default="25,51", help="comma-separated numbers of inputs")
    parser.add_argument(
        "--d", default=None, help="comma-separated dimensions (default per --quick)"
    )
    parser.add_argument("--ratios", action="store_true", help="rule / median, rule / Gram")
    parser.add_argument("--memory", action="store_true", help="peak extra memory / input")
    parser.add_argument("--track", action="store_true", help="--memory of Rule.aggregate")
    parser.add_argument("--byzfl", action="store_true", help="ByzFL's aggregators as peers")
    parser.add_argument("--byzfl-path", default=None, help="wheel/dir holding byzfl (optional)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (e.g. 1)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        name, n, d, *track = args.memory_child.split(",")
        _memory_child(name, int(n), int(float(d)), bool(track))
        return
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rules = args.rules.split(",")
    if rules == ["beyond"]:
        rules = [*BEYOND, *BEYOND_OWN]
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
    if args.byzfl:
        _byzfl_section(sizes, rules, args.repeats, args.byzfl_path)
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
