"""The median with the opt-in compiled sorting network (``FLWR_BYZ_COMPILED_NETWORKS=1``,
``flwr_byz.gars._compiled``) against the default numpy path, interleaved in one process on the
same input, and the first call's compile time. Both run inside ``gars.rows_checked()``, as in a
strategy round (the replies were screened finite while stacking): no finiteness pass over the input.

    python benchmarks/bench_compiled.py [--nodes 25,50,51] [--params 1000000] [--repeats 7]

Prints per n: the compile time (first compiled call, which includes inductor's work or its disk
cache), the median seconds of each path, the ratio compiled / numpy, and whether the outputs are
equal bit for bit. Numbers depend on the machine and its load; nothing here is asserted by the
tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from flwr_byz import gars
from flwr_byz.gars import _compiled


def _median(x: torch.Tensor, compiled: bool) -> tuple[torch.Tensor, float]:
    os.environ[_compiled.ENV_VAR] = "1" if compiled else "0"
    with gars.rows_checked():
        start = time.perf_counter()
        out = gars.median(x, 0)
        return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="25,50,51")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"d={args.params}, torch threads={torch.get_num_threads()}, median of {args.repeats}")
    print("| n | compile s | numpy s | compiled s | compiled / numpy | equal |")
    print("|---|---|---|---|---|---|")
    for n in (int(v) for v in args.nodes.split(",")):
        x = torch.randn(n, args.params, generator=torch.Generator().manual_seed(n))
        first, compile_seconds = _median(x, True)
        if _compiled._BROKEN:
            print(f"| {n} | failed: {_compiled._BROKEN[0][:60]} | | | | |")
            return
        plain, compiled = [], []
        for _ in range(args.repeats):
            reference, seconds = _median(x, False)
            plain.append(seconds)
            out, seconds = _median(x, True)
            compiled.append(seconds)
        equal = torch.equal(out, reference) and torch.equal(first, reference)
        p, c = statistics.median(plain), statistics.median(compiled)
        print(f"| {n} | {compile_seconds:.1f} | {p:.4f} | {c:.4f} | {c / p:.2f} | {equal} |")


if __name__ == "__main__":
    main()
