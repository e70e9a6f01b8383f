"""The coordinate-wise rules (median, trimmed mean, Phocas, MeaMed) with the pruned sorting network
against the same rules with the per-block sort (``gars._columns.NETWORK_COMPARATORS_PER_VALUE`` set
so that every block takes one or the other path), interleaved in one process, on the same input.

    python benchmarks/bench_network.py [--nodes 11,25,39,51] [--params 1000000] [--repeats 5]

Prints, per rule and n, the median seconds of each path and the ratio network / sort, untracked
(the plain function) and tracked (``Rule.aggregate``, participation counted). Numbers depend on
the machine and its load; nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flwr_byz import gars
from flwr_byz.gars import _columns


def _timed(call, per_value: int) -> float:
    _columns.NETWORK_COMPARATORS_PER_VALUE = per_value
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="11,25,39,51")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default = _columns.NETWORK_COMPARATORS_PER_VALUE
    print(f"d={args.params}, torch threads={torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'rule':<13} {'n':>3} {'f':>3} {'path':<8} {'sort (s)':>9} {'network (s)':>12} ratio")
    for n in (int(x) for x in args.nodes.split(",")):
        vectors = torch.randn(n, args.params, generator=torch.Generator().manual_seed(n))
        for name in ("median", "trimmed_mean", "phocas", "meamed"):
            rule = gars.get(name)
            f = rule.max_f(n)
            for path, call in (
                ("plain", lambda r=rule, x=vectors, f=f: r(x, f)),
                ("tracked", lambda r=rule, x=vectors, f=f: r.aggregate(x, f)),
            ):
                call()  # warm-up
                sort, network = [], []
                for _ in range(args.repeats):
                    sort.append(_timed(call, -1))
                    network.append(_timed(call, 10**6))
                s, w = statistics.median(sort), statistics.median(network)
                print(f"{name:<13} {n:>3} {f:>3} {path:<8} {s:>9.4f} {w:>12.4f} {w / s:>6.2f}")
    _columns.NETWORK_COMPARATORS_PER_VALUE = default


if __name__ == "__main__":
    main()
