"""flwr-byz's own app on a real deployment: SuperLink + SuperNodes + the colluding coordinator.

Flower processes on 127.0.0.1 (free ports), one SuperNode per partition, the last partition
Byzantine with an omniscient attack that gets the round's honest vectors from the coordinator
running as its own process (`python -m flwr_byz.clients.coordinator`). The run is submitted with
`flwr run <app> <connection> --run-config ...`, followed with `flwr ls` until it finishes, and
judged from the `result.json` the ServerApp writes under `results-dir/run-name/`.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from .harness import REPO_ROOT, Federation, ProcessHarness, copy_app, free_port, make_node_key

pytestmark = pytest.mark.integration

PROJECT_PACKAGES = ("flwr_byz",)  # clients/ and simulations/ are links into it


def project_app(destination: Path, run_config_keys: dict[str, Any]) -> Path:
    """Copy the project (pyproject.toml + packages) where `flwr run` may write.

    `flwr run --run-config` only overrides keys declared in `[tool.flwr.app.config]`; keys the
    test sets that the repo's pyproject.toml does not declare are added to the copy (with the
    test's values). `[tool.flwr.federations]` is dropped from the copy: Flower 1.41 reads
    connections from FLWR_HOME/config.toml and would otherwise migrate that section.
    """
    app = copy_app(REPO_ROOT, destination, PROJECT_PACKAGES)
    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    flwr_tool = pyproject["tool"]["flwr"]
    flwr_tool.pop("federations", None)
    declared = flwr_tool["app"].setdefault("config", {})
    for key, value in run_config_keys.items():
        declared.setdefault(key, value)
    (app / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return app


def start_coordinator(harness: ProcessHarness) -> str:
    """The colluding coordinator as its own process; returns its host:port."""
    address = f"127.0.0.1:{free_port()}"
    coordinator = harness.start(
        "coordinator", [sys.executable, "-m", "flwr_byz.clients.coordinator", "--address", address]
    )
    coordinator.wait_for_log(r"coordinator listening on", timeout=60)
    return address


def byzantine_run_config(
    num_nodes: int, rounds: int, results_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """One Byzantine SuperNode (the last partition), weights mode, MLP on MNIST-5k."""
    config: dict[str, Any] = {
        "experiment": "",
        "dataset": "mnist5k",
        "model": "mlp",
        "partitioning": "iid",
        "seed": 1,
        "num-clients": num_nodes,
        "update-mode": "weights",
        "local-epochs": 2,
        "local-lr": 0.1,
        "batch-size": 83,
        "num-byzantine": 1,
        "num-attackers": 1,
        "byzantine-partitions": str(num_nodes - 1),
        "num-rounds": rounds,
        "results-dir": str(results_dir),
        "run-name": "deployment",
        "coordinator-timeout": 120.0,
    }
    config.update(overrides)
    return config


#: No attacker: the median over honest nodes (node-loss test, SuperNode benchmark).
NO_ATTACK: dict[str, Any] = {
    "rule": "median",
    "num-byzantine": 1,
    "num-attackers": 0,
    "attack": "none",
    "byzantine-partitions": "",
    "local-epochs": 1,
}


def run_byzantine_federation(
    federation: Federation, tmp_path: Path, num_nodes: int, run_config: dict[str, Any]
) -> dict[str, Any]:
    """Start everything, run, wait for `flwr ls` to report the end; returns result.json."""
    federation.start_superlink()
    for partition_id in range(num_nodes):
        federation.start_supernode(partition_id, num_nodes)
    federation.wait_for_supernodes()
    app = project_app(tmp_path / "app", run_config)
    run_id = federation.run(app, run_config)
    status = federation.wait_for_run(run_id, timeout=240)
    log = federation.run_log(run_id)
    assert status == "finished:completed", f"run {run_id} ended {status!r}\n{log}"
    result_path = Path(run_config["results-dir"]) / run_config["run-name"] / "result.json"
    assert result_path.exists(), f"no {result_path}\n{log}"
    return json.loads(result_path.read_text())


def tls_handshake(port: int, cafile: Path | None) -> str | None:
    """TLS handshake with 127.0.0.1:port trusting `cafile` (None: system store); the version."""
    context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket,
    ):
        return tls_socket.version()


def check_rounds(result: dict[str, Any], num_nodes: int, rounds: int, min_accuracy: float) -> None:
    """The run finished every round with every reply accepted and a good final model."""
    assert result["status"] == "finished"
    assert result["completed-rounds"] == rounds
    train_rounds = [r for r in result["rounds"] if r["round"] >= 1]
    assert [r["round"] for r in train_rounds] == list(range(1, rounds + 1))
    for metrics in train_rounds:
        # The Byzantine node answered every round: it got the honest vectors from the
        # coordinator in time (a colluder that cannot reach it fails and is excluded).
        assert metrics["replies"] == num_nodes, metrics
        assert metrics["excluded"] == 0, metrics
        assert 0.0 <= metrics["byzantine-influence"] <= 1.0, metrics
    initial_accuracy = result["rounds"][0]["test-accuracy"]
    assert result["final-accuracy"] >= min_accuracy > initial_accuracy


def test_omniscient_attacker_through_coordinator(federation_factory, tmp_path: Path) -> None:
    """5 SuperNodes, partition 4 runs IPM (omniscient, via the coordinator), Krum keeps it out."""
    federation: Federation = federation_factory()
    num_nodes, rounds = 5, 2
    coordinator = start_coordinator(federation.harness)
    run_config = byzantine_run_config(
        num_nodes,
        rounds,
        tmp_path / "results",
        rule="krum",
        attack="ipm",
        **{"attack-options": json.dumps({"eps": 0.1}), "coordinator-address": coordinator},
    )
    result = run_byzantine_federation(federation, tmp_path, num_nodes, run_config)
    check_rounds(result, num_nodes, rounds, min_accuracy=0.75)
    train_rounds = [r for r in result["rounds"] if r["round"] >= 1]
    # Krum selects one honest submission: the IPM vector -0.1 * mean sits far from all of them.
    for metrics in train_rounds:
        assert metrics["selected-partitions"] != [num_nodes - 1], metrics
        assert len(metrics["selected-nodes"]) == 1


def test_tls_deployment_with_alie_attacker(federation_factory, tmp_path: Path) -> None:
    """Over TLS (throw-away CA): 4 SuperNodes, 1 ALIE attacker (omniscient), median."""
    federation: Federation = federation_factory(tls=True)
    num_nodes, rounds = 4, 2
    coordinator = start_coordinator(federation.harness)
    run_config = byzantine_run_config(
        num_nodes,
        rounds,
        tmp_path / "results",
        rule="median",
        attack="alie",
        **{"attack-options": json.dumps({"z": 1.5}), "coordinator-address": coordinator},
    )
    result = run_byzantine_federation(federation, tmp_path, num_nodes, run_config)
    check_rounds(result, num_nodes, rounds, min_accuracy=0.7)
    assert federation.tls is not None
    assert (
        "Uvicorn running on https://" in federation.harness.processes[1].log()
    )  # [0]: coordinator
    # The SuperLink speaks TLS only, with a certificate that verifies against the test CA alone.
    assert tls_handshake(federation.superlink_port, federation.tls.ca_cert) in (
        "TLSv1.2",
        "TLSv1.3",
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(federation.superlink_port, cafile=None)  # the system trust store only


def test_supernode_authentication_admits_only_registered_keys(
    federation_factory, tmp_path: Path
) -> None:
    """`--enable-supernode-auth` (TLS): a registered key connects, an unknown one is refused."""
    federation: Federation = federation_factory(tls=True)
    federation.start_superlink(enable_supernode_auth=True)
    registered, registered_public = make_node_key(tmp_path / "keys" / "registered")
    stranger, _ = make_node_key(tmp_path / "keys" / "stranger")
    register = federation.flwr(
        "supernode", "register", str(registered_public), federation.connection, "--format", "json"
    )
    assert register.returncode == 0, register.stdout + register.stderr
    good = federation.start_supernode(0, 2, auth_private_key=registered)
    bad = federation.start_supernode(
        1, 2, auth_private_key=stranger, extra_args=("--max-retries", "2")
    )
    good.wait_for_log(r"SuperNode ID: \d+", timeout=90)
    bad.wait_for_log(r"Failed to activate SuperNode", timeout=90)
    deadline = time.monotonic() + 60
    while bad.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not bad.running() and bad.popen is not None and bad.popen.returncode != 0
    assert good.running()
    listing = federation.flwr("supernode", "list", federation.connection, "--format", "json")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    nodes = json.loads(listing.stdout[listing.stdout.find("{") :])["nodes"]
    assert [node["status"] for node in nodes] == ["online"], nodes
