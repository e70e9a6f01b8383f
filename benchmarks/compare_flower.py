"""Our strategies next to Flower's built-ins of the same name, end to end, on the same replies.

Each case is one training round of ``strategy.start`` (Message API) through
``flwr_byz.inprocess.InProcessGrid``: n = 11 nodes reply fixed weight vectors (d = 50) and a
``num-examples`` count; the script prints, per strategy pair and case, how far each aggregate lies
from the mean of the honest replies (l2), or the error it raised. Flower's strategies weight by
the clients' own ``num-examples`` and take replies as they come; ours aggregate unweighted,
exclude (and report) malformed replies and never weight by self-reported counts.

    python benchmarks/compare_flower.py

The table in docs/strategies.md ("Ours and Flower's built-ins") comes from this script.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import strategy as flower

from flwr_byz import strategy as ours
from flwr_byz.inprocess import InProcessGrid

N, F, D = 11, 2, 50
KEY = "w"


def _honest(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (1.0 + 0.1 * rng.standard_normal((N - F, D))).astype(np.float32)


def _cases() -> dict[str, tuple[np.ndarray, list[float]]]:
    """name -> (replies (n, d), num-examples per reply); the last F rows are the attackers'."""
    honest = _honest()
    mu, sigma = honest.mean(0), honest.std(0)
    equal = [100.0] * N
    out = {
        "no attack, equal counts": (np.vstack([honest, _honest(1)[:F]]), equal),
        "no attack, counts 10..1000": (
            np.vstack([honest, _honest(1)[:F]]),
            list(np.linspace(10, 1000, N)),
        ),
        "2 attackers at -10": (np.vstack([honest, np.full((F, D), -10.0)]), equal),
        "1 attacker at -10 claiming 1e6 examples": (
            np.vstack([honest, _honest(1)[:1], np.full((1, D), -10.0)]),
            [100.0] * (N - 1) + [1e6],
        ),
        "ALIE (mu - 1.5 sigma), 2 attackers": (
            np.vstack([honest, np.tile(mu - 1.5 * sigma, (F, 1))]),
            equal,
        ),
        "1 reply with a NaN": (
            np.vstack([honest, _honest(1)[:1], np.where(np.arange(D) == 0, np.nan, 1.0)[None]]),
            equal,
        ),
    }
    return {name: (rows.astype(np.float32), counts) for name, (rows, counts) in out.items()}


def _client_app(rows: np.ndarray, counts: list[float]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        index = int(context.node_config["partition-id"])
        arrays = ArrayRecord({KEY: Array(rows[index])})
        metrics = MetricRecord({"num-examples": counts[index]})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)

    return app


PAIRS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "FedAvg / Average": (
        lambda: flower.FedAvg(fraction_evaluate=0.0),
        lambda: ours.Average(fraction_evaluate=0.0),
    ),
    "FedMedian / Median": (
        lambda: flower.FedMedian(fraction_evaluate=0.0),
        lambda: ours.Median(num_byzantine=F, fraction_evaluate=0.0),
    ),
    "FedTrimmedAvg(beta=0.2) / TrimmedMean(b=2)": (
        lambda: flower.FedTrimmedAvg(beta=0.2, fraction_evaluate=0.0),
        lambda: ours.TrimmedMean(num_byzantine=F, fraction_evaluate=0.0),
    ),
    "Krum": (
        lambda: flower.Krum(num_malicious_nodes=F, fraction_evaluate=0.0),
        lambda: ours.Krum(num_byzantine=F, fraction_evaluate=0.0),
    ),
    "MultiKrum(m=n-f)": (
        lambda: flower.MultiKrum(
            num_malicious_nodes=F, num_nodes_to_select=N - F, fraction_evaluate=0.0
        ),
        lambda: ours.MultiKrum(num_byzantine=F, fraction_evaluate=0.0),
    ),
    "Bulyan": (
        lambda: flower.Bulyan(num_malicious_nodes=F, fraction_evaluate=0.0),
        lambda: ours.Bulyan(num_byzantine=F, fraction_evaluate=0.0),
    ),
}


def one_round(make: Callable[[], Any], rows: np.ndarray, counts: list[float]) -> str:
    """The l2 distance of the round's model to the honest mean, or the error raised."""
    initial = ArrayRecord({KEY: Array(np.zeros(D, dtype=np.float32))})
    grid = InProcessGrid(_client_app(rows, counts), [{} for _ in range(N)])
    try:
        result = make().start(grid, initial, num_rounds=1)
    except Exception as err:  # Flower's strategies raise on some inputs: that is the finding
        return f"raises {type(err).__name__}"
    model = result.arrays[KEY].numpy().astype(np.float64)
    if not np.all(np.isfinite(model)):
        return "NaN in the model"
    honest_mean = rows[: N - F].astype(np.float64).mean(0)
    return f"{np.linalg.norm(model - honest_mean):.3g}"


def main() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)
    cases = _cases()
    print(f"n = {N}, f = {F}, d = {D}; l2 distance of the aggregate to the honest mean")
    print("| pair | case | Flower | flwr-byz |")
    print("|---|---|---|---|")
    for pair, (make_flower, make_ours) in PAIRS.items():
        for case, (rows, counts) in cases.items():
            theirs = one_round(make_flower, rows, counts)
            mine = one_round(make_ours, rows, counts)
            print(f"| {pair} | {case} | {theirs} | {mine} |", flush=True)


if __name__ == "__main__":
    main()
