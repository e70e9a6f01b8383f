"""The coordinate-wise rules with the opt-in compiled sorting networks
(``FLWR_BYZ_COMPILED_NETWORKS=1``, ``flwr_byz.gars._compiled``) against the default numpy path,
interleaved in one process on the same input, and the first call's compile time. Both run inside
``gars.rows_checked()``, as in a strategy round (the replies were screened finite while stacking):
no finiteness pass over the input.

    python benchmarks/bench_compiled.py [--rules median,trimmed_mean,...]
                                        [--nodes 25,51] [--params 1000000] [--repeats 7]

The trimmed mean and Phocas trim b = n // 4 values per side, MeaMed keeps n - f with f = n // 4
and the nearest median n - f - 1;
Bulyan (Krum selector) runs at its largest f, (n - 3) // 4, and only its second step is compiled.
Prints per rule and n: the compile time (the first compiled call, which includes inductor's work
or its disk cache), the median seconds of each path, the ratio compiled / numpy, and whether the
outputs are equal bit for bit. Numbers depend on the machine and its load; nothing here is
asserted by the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from flwr_byz import gars
from flwr_byz.gars import _compiled

RULES = {
    "median": lambda x: gars.median(x, 0),
    "trimmed_mean": lambda x: gars.trimmed_mean(x, x.shape[0] // 4),
    "phocas": lambda x: gars.phocas(x, x.shape[0] // 4),
    "meamed": lambda x: gars.meamed(x, x.shape[0] // 4),
    "nearest_median": lambda x: gars.get("nearest_median").fn(x, x.shape[0] // 4),
    "bulyan": lambda x: gars.bulyan(x, (x.shape[0] - 3) // 4),
}


def _timed(rule: str, x: torch.Tensor, compiled: bool) -> tuple[torch.Tensor, float]:
    os.environ[_compiled.ENV_VAR] = "1" if compiled else "0"
    with gars.rows_checked():
        start = time.perf_counter()
        out = RULES[rule](x)
        return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="25,50,51")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rules", default=",".join(RULES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"d={args.params}, torch threads={torch.get_num_threads()}, median of {args.repeats}")
    print("| rule | n | compile s | numpy s | compiled s | compiled / numpy | equal |")
    print("|---|---|---|---|---|---|---|")
    for rule in args.rules.split(","):
        for n in (int(v) for v in args.nodes.split(",")):
            x = torch.randn(n, args.params, generator=torch.Generator().manual_seed(n))
            first, compile_seconds = _timed(rule, x, True)
            if _compiled._BROKEN:
                print(f"| {rule} | {n} | failed: {_compiled._BROKEN[0][:60]} | | | | |")
                return
            plain, compiled = [], []
            for _ in range(args.repeats):
                reference, seconds = _timed(rule, x, False)
                plain.append(seconds)
                out, seconds = _timed(rule, x, True)
                compiled.append(seconds)
            equal = torch.equal(out, reference) and torch.equal(first, reference)
            p, c = statistics.median(plain), statistics.median(compiled)
            print(
                f"| {rule} | {n} | {compile_seconds:.1f} | {p:.4f} | {c:.4f} | {c / p:.2f} "
                f"| {equal} |"
            )


if __name__ == "__main__":
    main()
