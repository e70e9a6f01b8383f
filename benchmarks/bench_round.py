"""Cost of one ``aggregate_train``: flwr-byz's Krum and Median vs Flower's Krum and FedMedian.

n = 51 replies of a 1e6-parameter model (three float32 arrays); every strategy gets the same reply
Messages; the time of ``aggregate_train`` (decoding, checks, rule, re-encoding: what a round costs
the server) is measured, median of the repeats, after one warm-up call.

    python benchmarks/bench_round.py [--nodes 51] [--params 1000000] [--repeats 5] [--device auto]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

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

from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Krum, Median


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


def _replies(model: dict[str, np.ndarray], nodes: int, f: int) -> list[Message]:
    """Reply Messages: honest = model + small noise, the last f ones sign-flipped and scaled."""
    rng = np.random.default_rng(1)
    instruction = RecordDict({"config": ConfigRecord({})})
    replies = []
    for node in range(1, nodes + 1):
        sent = Message(instruction, node, MessageType.TRAIN)
        sent.metadata.__dict__["_message_id"] = f"bench-{node}"
        scale = -10.0 if node > nodes - f else 1.0
        arrays = {
            k: (v + scale * 0.01 * rng.standard_normal(v.shape, dtype=np.float32)).astype(v.dtype)
            for k, v in model.items()
        }
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                "metrics": MetricRecord({"num-examples": 32, "train-loss": 1.0}),
            }
        )
        replies.append(Message(content, reply_to=sent))
    return replies


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=51)
    parser.add_argument("--byzantine", type=int, default=12)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    flower_logger.setLevel(logging.ERROR)

    # the grid is only sampled, never called; building it sets TaskIdentity for Message(...)
    grid = InProcessGrid(lambda m, c: m, [{}] * args.nodes)
    model = _model(args.params)
    global_record = ArrayRecord({k: Array(v) for k, v in model.items()})
    n, f = args.nodes, args.byzantine
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
    for rule, mine, flower in rows:
        print(f"{rule:<8} {mine:>13.3f} {flower:>11.3f} {flower / mine:>18.2f}")


if __name__ == "__main__":
    main()
