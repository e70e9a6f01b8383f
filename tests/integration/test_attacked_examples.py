"""Apps written without flwr-byz in mind, attacked by `byzantine_mod` and defended, via `flwr run`.

`examples/attacked-quickstart` (Message API) and `examples/attacked-legacy` (`client_fn` /
`NumPyClient`, `ServerApp(server_fn=...)`) differ from plain Flower apps by one line on each side:
`mods=[byzantine_mod()]` on the ClientApp; the strategy swap (and `adversary_grid` /
`adversary_app` for omniscient attacks) on the ServerApp. Attack and defence are chosen by run
config. Each ServerApp writes a results file: final test accuracy, the replies the wrapped grid
saw marked as attacked (round -> sender ids), the nodes that asked for the honest vectors
(omniscient attacks), Krum's last choice and the clients' train metrics as the server got them.

Five nodes, partition 0 Byzantine (Krum with f = 1 needs n >= 2f + 3 = 5), two rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import REPO_ROOT, Federation, FlwrCli, LocalSimulation, copy_app

EXAMPLES = REPO_ROOT / "examples"
QUICKSTART = (EXAMPLES / "attacked-quickstart", "attacked_quickstart")
LEGACY = (EXAMPLES / "attacked-legacy", "attacked_legacy")
NUM_NODES = 5
ROUNDS = 2
SIGN_FLIP = {"attack": "sign_flip", "attack-options": '{"scale": 10.0}'}
ALIE = {"attack": "alie", "attack-options": ""}
DEFENDED_ACCURACY = 0.9
UNDEFENDED_ACCURACY = 0.5  # sign flip x10 of 1 node in 5 moves FedAvg's model against training

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run_config(strategy: str, attack: dict[str, str], results: Path) -> dict[str, str | int]:
    return {
        "num-server-rounds": ROUNDS,
        "strategy": strategy,
        "byzantine-partitions": "0",
        "min-nodes": NUM_NODES,
        "fraction-evaluate": 0.0,  # the server evaluates centrally; spare the clients' processes
        **attack,
        "results-file": str(results),
    }


def _results(cli: FlwrCli, run_id: int, results: Path, timeout: float = 240) -> dict:
    """Wait for the run; it must end `finished:completed` (by `flwr ls`) with a results file."""
    status = cli.wait_for_run(run_id, timeout=timeout)
    log = cli.run_log(run_id)
    assert status == "finished:completed", f"run {run_id} ended {status!r}\n{log}"
    assert results.exists(), f"the ServerApp wrote no results file\n{log}"
    out = json.loads(results.read_text())
    print(log[-6000:])  # shown when a later check fails (and with `pytest -rP`)
    print(json.dumps(out))
    return out


def _check_attacked(out: dict, *, omniscient: bool) -> int:
    """Every round held exactly one attacked reply, from the same node; returns that node."""
    rounds = out["attacked-rounds"]
    assert sorted(rounds) == [str(r) for r in range(1, ROUNDS + 1)], out
    senders = {node for nodes in rounds.values() for node in nodes}
    assert all(len(nodes) == 1 for nodes in rounds.values()) and len(senders) == 1, out
    (node,) = senders
    # an omniscient attacker asked the grid for the honest vectors; an own-vector one did not
    assert out["omniscient-node-ids"] == ([node] if omniscient else []), out
    return node


def _check_client_metrics(out: dict) -> None:
    """The clients' own train loss reached the ServerApp (Flower's Result / metrics aggregation)."""
    metrics = out["train-metrics"]
    assert sorted(metrics) == [str(r) for r in range(1, ROUNDS + 1)], out
    assert all(0.0 <= float(m["train-loss"]) < 5.0 for m in metrics.values()), out


def _check_all_used(out: dict) -> None:
    """Every round's aggregation took all replies, the attacker's included (none excluded,
    none dropped): flwr-byz's round metrics (Message API) / the accepted count (legacy)."""
    for metrics in out["train-metrics"].values():
        if "clients" in metrics:  # legacy: the example's fit_metrics_aggregation_fn
            assert metrics["clients"] == NUM_NODES, out
        else:
            assert metrics["byz.replies"] == NUM_NODES and metrics["byz.excluded"] == 0, out
            assert metrics["byz.dropped-replies"] == 0, out


def _start_federation(federation_factory) -> Federation:
    federation: Federation = federation_factory()
    federation.start_superlink()
    for partition_id in range(NUM_NODES):
        federation.start_supernode(partition_id, NUM_NODES)
    federation.wait_for_supernodes()
    return federation


@pytest.mark.parametrize("example", [QUICKSTART, LEGACY], ids=["message-api", "legacy"])
def test_sign_flip_krum_and_fedavg_on_local_simulation(
    example: tuple[Path, str], local_simulation: LocalSimulation, tmp_path: Path
) -> None:
    """Sign flip x10 from partition 0: Krum keeps the model accurate and never picks the
    attacker; FedAvg under the same attack (same SuperLink, next run) is clearly worse."""
    source, package = example
    app = copy_app(source, tmp_path / "app", (package,))
    federation = {"num-supernodes": NUM_NODES}
    outs = {}
    for strategy in ("krum", "fedavg"):
        results = tmp_path / f"results-{strategy}.json"
        run_id = local_simulation.run(
            app, _run_config(strategy, SIGN_FLIP, results), federation_config=federation
        )
        outs[strategy] = _results(local_simulation, run_id, results)
    krum, fedavg = outs["krum"], outs["fedavg"]
    attacker = _check_attacked(krum, omniscient=False)
    _check_attacked(fedavg, omniscient=False)
    assert krum["selected-node-ids"] and attacker not in krum["selected-node-ids"], krum
    assert krum["test-accuracy"] >= DEFENDED_ACCURACY, krum
    assert fedavg["test-accuracy"] <= UNDEFENDED_ACCURACY, fedavg
    _check_client_metrics(krum)
    _check_client_metrics(fedavg)


@pytest.mark.parametrize("example", [QUICKSTART, LEGACY], ids=["message-api", "legacy"])
def test_alie_median_on_supernodes(
    example: tuple[Path, str], federation_factory, tmp_path: Path
) -> None:
    """ALIE from partition 0 (the grid wrapper relays the honest replies) on a real SuperLink
    with 5 SuperNodes: the attack runs every round and Median keeps the model accurate."""
    federation = _start_federation(federation_factory)
    source, package = example
    app = copy_app(source, tmp_path / "app", (package,))
    results = tmp_path / "results.json"
    run_id = federation.run(app, _run_config("median", ALIE, results))
    out = _results(federation, run_id, results)
    _check_attacked(out, omniscient=True)
    _check_all_used(out)
    assert out["test-accuracy"] >= DEFENDED_ACCURACY, out
    _check_client_metrics(out)
