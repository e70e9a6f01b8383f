"""The drop-in examples run unchanged through `flwr run`: on the local simulation and on SuperNodes.

Each example's ServerApp writes the final test accuracy to `results-file`; one partition acts
Byzantine (it sends the received model moved 100x against its honest update, which drags a plain
average against training); the flwr-byz Krum the examples swap in keeps the model accurate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import REPO_ROOT, Federation, FlwrCli, LocalSimulation, copy_app

EXAMPLES = REPO_ROOT / "examples"
MESSAGE_API = (EXAMPLES / "dropin-message-api", "dropin_message_api")
LEGACY = (EXAMPLES / "dropin-legacy", "dropin_legacy")
NUM_NODES = 5  # Krum with f = 1 needs n >= 2f + 3 = 5
BYZANTINE_RUN_CONFIG = {"num-server-rounds": 2, "byzantine-partitions": "4", "attack-scale": 100.0}


def _final_accuracy(cli: FlwrCli, run_id: int, results: Path, timeout: float) -> float:
    status = cli.wait_for_run(run_id, timeout=timeout)
    log = cli.run_log(run_id)
    assert status == "finished:completed", f"run {run_id} ended {status!r}\n{log}"
    assert results.exists(), f"the ServerApp wrote no results file\n{log}"
    return float(json.loads(results.read_text())["test-accuracy"])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("example", [MESSAGE_API, LEGACY], ids=["message-api", "legacy"])
def test_example_on_local_simulation(
    example: tuple[Path, str], local_simulation: LocalSimulation, tmp_path: Path
) -> None:
    """`flwr run` with the local simulation connection (5 virtual nodes, 1 Byzantine)."""
    source, package = example
    app = copy_app(source, tmp_path / "app", (package,))
    results = tmp_path / "results.json"
    run_id = local_simulation.run(
        app,
        {**BYZANTINE_RUN_CONFIG, "results-file": str(results)},
        federation_config={"num-supernodes": NUM_NODES},
    )
    assert _final_accuracy(local_simulation, run_id, results, timeout=150) >= 0.9


@pytest.mark.integration
@pytest.mark.slow
def test_message_api_example_on_supernodes(federation_factory, tmp_path: Path) -> None:
    """The same app on a real SuperLink with 5 SuperNodes (one Byzantine) on loopback."""
    federation: Federation = federation_factory()
    federation.start_superlink()
    for partition_id in range(NUM_NODES):
        federation.start_supernode(partition_id, NUM_NODES)
    federation.wait_for_supernodes()
    app = copy_app(*MESSAGE_API[:1], tmp_path / "app", MESSAGE_API[1:])
    results = tmp_path / "results.json"
    run_id = federation.run(app, {**BYZANTINE_RUN_CONFIG, "results-file": str(results)})
    assert _final_accuracy(federation, run_id, results, timeout=150) >= 0.9
