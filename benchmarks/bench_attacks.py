"""Round time under each omniscient attack against the clean round with the same rule.

Setup: the in-process engine, n = 51 workers (f = 12 of them attack), the MNIST-5k 784-100-10
MLP in gradient mode (batch 83), ``num-rounds`` rounds; the time of a round is the ServerApp's
``round-seconds``, reported as the median of rounds 2-8 and as the ratio to the clean round (the
same rule, ``attack = "none"``). ALIE, IPM and the omniscient negative run against ``--rule``
(median), the l_p attack against Bulyan. ``--per-attacker`` measures the older path: every
attacker fetches the k honest vectors from the coordinator and computes the vector itself, and
the l_p search against Bulyan runs the whole rule at every step.

    python benchmarks/bench_attacks.py [--rounds 9] [--threads 1] [--per-attacker]
                                       [--attacks alie,ipm,omniscient_negative,lp_coordinate]
                                       [--engine inprocess|flower] [--repeats 1]

Every run knows the honest node ids (``byzantine-influence``), the clean one too, so every round
tracks participation. ``--repeats R`` runs the clean and the attacked run R times each,
alternately, and reports the medians and the median of the R paired ratios (each pair ran under
about the same load). ``--engine flower`` runs Flower's simulation engine (its round time holds
its polling waits, so the ratios say less there).

Numbers depend on the machine and its load; nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.server_app import quiet_flower

N, F, BATCH, LR = 51, 12, 83, 0.1
ATTACKS = ("alie", "ipm", "omniscient_negative", "lp_coordinate")


def round_seconds(
    attack: str, rule: str, rounds: int, threads: int, engine: str = "inprocess"
) -> float:
    """Median ``round-seconds`` of rounds 2-8 (or all but the first) of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            num_clients=N, num_byzantine=F, rule=rule, attack=attack, batch_size=BATCH,
            learning_rate=LR, num_rounds=rounds, eval_every=10**6, seed=1, results_dir=tmp,
            run_name="bench/attack",
        )  # fmt: skip
        record = engines.run(cfg, engine=engine, threads=threads)
    trained = [r for r in record.rounds if "round-seconds" in r]  # not round 0
    _check_happened(attack, trained)
    seconds = [r["round-seconds"] for r in trained]
    return statistics.median(seconds[1:8] if len(seconds) > 1 else seconds)


def _check_happened(attack: str, rounds: list[dict]) -> None:
    """Refuse to time a run in which nothing happened: a round that kept the model, or (attacked
    runs) a round without the f attackers' replies."""
    kept = [r["round"] for r in rounds if r.get("kept-model")]
    missing = [r["round"] for r in rounds if attack != "none" and r.get("attack-replies") != F]
    if not rounds or kept or missing:
        raise SystemExit(
            f"bench_attacks: {attack}: nothing to time (rounds {len(rounds)}, kept the model in "
            f"{kept}, fewer than {F} attack replies in {missing})"
        )


def per_attacker_path() -> None:
    """The path before issue 10: ``AdversaryGrid`` leaves every attack to the attackers, and the
    l_p search against Bulyan calls the rule at every step (no quadratic distance model)."""
    import importlib

    import flwr_byz.clients.adversary as adversary

    lp_coordinate = importlib.import_module("flwr_byz.attacks.lp_coordinate")
    adversary._shared_attack = lambda run_config, partition_of: (None, 0)  # type: ignore
    surrogate = lp_coordinate.distance_surrogate

    def without_bulyan(name: str | None, *args: object, **kwargs: object) -> object:
        return None if name == "bulyan" else surrogate(name, *args, **kwargs)  # type: ignore

    lp_coordinate.distance_surrogate = without_bulyan  # type: ignore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rule", default="median", help="rule for alie, ipm, omniscient_negative")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--per-attacker", action="store_true", help="the older per-attacker path")
    parser.add_argument("--engine", default="inprocess", choices=engines.ENGINES)
    parser.add_argument("--repeats", type=int, default=1, help="clean/attack pairs per attack")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_flower()
    if args.per_attacker:
        per_attacker_path()
    path = "per attacker (coordinator fetch)" if args.per_attacker else "once per round"
    print(
        f"n={N}, f={F}, MNIST-5k MLP, gradient mode, {args.engine}, {path}, "
        f"threads={args.threads}, {args.repeats} clean/attack pair(s)"
    )
    print(f"{'attack':<20} {'rule':<8} {'clean (s)':>10} {'attack (s)':>11} {'ratio':>6}")
    for attack in args.attacks.split(","):
        rule = "bulyan" if attack == "lp_coordinate" else args.rule
        clean, attacked = [], []
        for _ in range(args.repeats):
            clean.append(round_seconds("none", rule, args.rounds, args.threads, args.engine))
            attacked.append(round_seconds(attack, rule, args.rounds, args.threads, args.engine))
        ratio = statistics.median(a / c for a, c in zip(attacked, clean, strict=True))
        clean_s, attack_s = statistics.median(clean), statistics.median(attacked)
        print(f"{attack:<20} {rule:<8} {clean_s:>10.3f} {attack_s:>11.3f} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
