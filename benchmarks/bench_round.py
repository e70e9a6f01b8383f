"""Cost of one ``aggregate_train``: every rule's strategy round against its plain kernel, and
flwr-byz's Krum and Median against Flower's Krum and FedMedian.

Default (ratios): for every rule of ``flwr_byz.gars.NAMES`` at its largest f (Brute at f = 2),
n in {25, 51} replies of a d-parameter model (three float32 arrays), the time of the Message-API
strategy's ``aggregate_train`` (matching, checks, stacking, rule, server step, re-encoding: what a
round costs the server) against the plain ``flwr_byz.gars`` function on the same deltas
``reply - global``. Calls are interleaved (kernel, round, kernel, ...); medians of the repeats.
``--participation`` also times a round that tracks participation (``track_participation=True``,
as when ``honest_node_ids`` are set); ``--identical-attackers`` makes the f attackers send one
vector (ALIE-like), so that exact ties sit at the window bounds of the coordinate-wise rules.
``--flower``: the older comparison with Flower's strategies.

    python benchmarks/bench_round.py [--nodes 25,51] [--params 1000000] [--repeats 5]
    python benchmarks/bench_round.py --rules krum,median --participation --threads 1
    python benchmarks/bench_round.py --participation --identical-attackers --threads 1
    python benchmarks/bench_round.py --flower [--nodes 51] [--device auto]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedMedian
from flwr.serverapp.strategy import Krum as FlowerKrum
from flwr.supercore.logger import FLOWER_LOGGER as flower_logger

from flwr_byz import gars
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import STRATEGIES, Krum, Median


def _model(params: int) -> dict[str, np.ndarray]:
    """Three float32 arrays, ``params`` values in all: 40 % and 50 % as (k, 1000), a bias."""
    a, b = int(0.4 * params) // 1000, int(0.5 * params) // 1000
    rest = params - 1000 * (a + b)
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((a, 1000), dtype=np.float32),
        "fc.weight": rng.standard_normal((b, 1000), dtype=np.float32),
        "fc.bias": rng.standard_normal(rest, dtype=np.float32),
    }


def _replies(
    model: dict[str, np.ndarray], nodes: int, f: int, identical: bool = False
) -> list[Message]:
    """Reply Messages: honest = model + small noise, the last f ones sign-flipped and scaled;
    ``identical``: the last f all send one vector, the honest mean + 0.5 std per coordinate
    (ALIE-like: exact ties at the window bounds of the coordinate-wise rules)."""
    rng = np.random.default_rng(1)
    instruction = RecordDict({"config": ConfigRecord({})})
    replies = []
    honest: list[dict[str, np.ndarray]] = []
    for node in range(1, nodes + 1):
        sent = Message(instruction, node, MessageType.TRAIN)
        sent.metadata.__dict__["_message_id"] = f"bench-{node}"
        scale = -10.0 if node > nodes - f else 1.0
        if identical and node > nodes - f:
            arrays = {
                k: (np.mean([h[k] for h in honest], axis=0)
                    + 0.5 * np.std([h[k] for h in honest], axis=0)).astype(v.dtype)
                for k, v in model.items()
            }  # fmt: skip
        else:
            arrays = {
                k: (v + scale * 0.01 * rng.standard_normal(v.shape, dtype=np.float32)).astype(
                    v.dtype
                )
                for k, v in model.items()
            }
            honest.append(arrays)
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                "metrics": MetricRecord({"num-examples": 32, "train-loss": 1.0}),
            }
        )
        replies.append(Message(content, reply_to=sent))
    return replies


def _deltas(replies: list[Message], model: dict[str, np.ndarray]) -> torch.Tensor:
    """The ``(n, d)`` float32 deltas ``reply - global`` the strategy's rule sees."""
    rows = []
    for reply in replies:
        record = reply.content.array_records["arrays"]
        rows.append(np.concatenate([(record[k].numpy() - v).reshape(-1) for k, v in model.items()]))
    return torch.from_numpy(np.stack(rows))


def _time(make_call, repeats: int) -> float:
    """Median seconds of ``call()`` over ``repeats``, each on fresh replies (Flower's FedMedian
    pops the arrays out of the replies it reads), after one warm-up call."""
    times = []
    for attempt in range(repeats + 1):
        call = make_call()
        start = time.perf_counter()
        call()
        if attempt:  # the first is the warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interleaved(
    calls: list[Callable[[], object]], repeats: int, stat: Callable = statistics.median
) -> list[float]:
    """Median (or ``stat``) seconds of each call, run in turn ``repeats`` times after one warm-up
    round."""
    times: list[list[float]] = [[] for _ in calls]
    for attempt in range(repeats + 1):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            if attempt:
                times[i].append(time.perf_counter() - start)
    return [stat(t) for t in times]


def _rule_f(name: str, n: int) -> int:
    return 2 if name == "brute" else gars.get(name).max_f(n)


def ratios(args: argparse.Namespace) -> None:
    """Strategy round / plain kernel for every rule and n."""
    model = _model(args.params)
    global_record = ArrayRecord({k: Array(v) for k, v in model.items()})
    names = args.rules.split(",") if args.rules else list(gars.NAMES)
    header = f"{'rule':<17} {'n':>3} {'f':>3} {'kernel (s)':>11} {'round (s)':>10} {'ratio':>6}"
    if args.participation:
        header += f" {'tracked (s)':>12} {'ratio':>6}"
    print(
        f"aggregate_train / plain kernel, d={args.params}, device=cpu, "
        f"torch threads={torch.get_num_threads()}, {'min' if args.min else 'median'} of "
        f"{args.repeats} interleaved"
    )
    print(header)
    for n in (int(x) for x in args.nodes.split(",")):
        sampling = {"min_train_nodes": n, "min_available_nodes": n, "fraction_train": 1.0}
        grid = InProcessGrid(lambda m, c: m, [{}] * n)  # sampled only, never called
        for name in names:
            print(_rule_row(name, n, model, global_record, grid, sampling, args), flush=True)


def _rule_row(
    name: str,
    n: int,
    model: dict[str, np.ndarray],
    global_record: ArrayRecord,
    grid: InProcessGrid,
    sampling: dict,
    args: argparse.Namespace,
) -> str:
    """One table line: kernel and strategy-round times of rule ``name`` with n replies."""
    f = _rule_f(name, n)
    replies = _replies(model, n, f, args.identical_attackers)
    deltas = _deltas(replies, model)
    rule = gars.get(name)

    def strategy_call(track: bool) -> Callable[[], object]:
        strategy = STRATEGIES[name](num_byzantine=f, device="cpu", **sampling)
        strategy.aggregator.track_participation = track
        strategy.configure_train(1, global_record, ConfigRecord(), grid)
        return lambda: strategy.aggregate_train(1, replies)

    calls = [lambda: rule(deltas, f), strategy_call(False)]
    if args.participation:
        calls.append(strategy_call(True))
    times = _interleaved(calls, args.repeats, min if args.min else statistics.median)
    line = f"{name:<17} {n:>3} {f:>3} {times[0]:>11.4f} {times[1]:>10.4f}"
    line += f" {times[1] / times[0]:>6.2f}"
    if args.participation:
        line += f" {times[2]:>12.4f} {times[2] / times[0]:>6.2f}"
    return line


def flower(args: argparse.Namespace) -> None:
    """flwr-byz's Krum and Median against Flower's Krum and FedMedian."""
    model = _model(args.params)
    global_record = ArrayRecord({k: Array(v) for k, v in model.items()})
    n, f = int(args.nodes.split(",")[-1]), args.byzantine
    # the grid is only sampled, never called; building it sets TaskIdentity for Message(...)
    grid = InProcessGrid(lambda m, c: m, [{}] * n)
    sampling = {"min_train_nodes": n, "min_available_nodes": n}

    def ours(strategy):
        def make_call():
            replies = _replies(model, n, f)
            strategy.configure_train(1, global_record, ConfigRecord(), grid)
            return lambda: strategy.aggregate_train(1, replies)

        return make_call

    def theirs(strategy):
        def make_call():
            replies = _replies(model, n, f)
            return lambda: strategy.aggregate_train(1, replies)

        return make_call

    rows = [
        (
            "krum",
            _time(ours(Krum(num_byzantine=f, device=args.device, **sampling)), args.repeats),
            _time(theirs(FlowerKrum(num_malicious_nodes=f, **sampling)), args.repeats),
        ),
        (
            "median",
            _time(ours(Median(num_byzantine=f, device=args.device, **sampling)), args.repeats),
            _time(theirs(FedMedian(**sampling)), args.repeats),
        ),
    ]
    device = Krum(num_byzantine=f, device=args.device).device
    print(
        f"aggregate_train, n={n}, f={f}, d={sum(v.size for v in model.values())}, "
        f"device={device}, torch threads={torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'rule':<8} {'flwr-byz (s)':>13} {'Flower (s)':>11} {'Flower / flwr-byz':>18}")
    for rule, mine, theirs_s in rows:
        print(f"{rule:<8} {mine:>13.3f} {theirs_s:>11.3f} {theirs_s / mine:>18.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="25,51", help="comma-separated n (--flower: the last)")
    parser.add_argument("--byzantine", type=int, default=12, help="f of --flower")
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="device of --flower")
    parser.add_argument("--rules", default="", help="comma-separated rule names (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--participation", action="store_true", help="also time tracked rounds")
    parser.add_argument(
        "--min", action="store_true", help="minima, not medians (less sensitive to a shared CPU)"
    )
    parser.add_argument(
        "--identical-attackers",
        action="store_true",
        help="the f attackers send one vector (honest mean + 0.5 std): ties at the window bounds",
    )
    parser.add_argument("--flower", action="store_true", help="compare with Flower's strategies")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flower_logger.setLevel(logging.ERROR)
    (flower if args.flower else ratios)(args)


if __name__ == "__main__":
    main()
