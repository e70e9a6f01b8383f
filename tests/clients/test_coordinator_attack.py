"""The coordinator's "attack" op: the round's attack vector computed once, served as d floats."""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

import pytest
import torch

import flwr_byz.clients.malicious as malicious
from flwr_byz.clients.coordinator import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorTimeoutError,
    start_coordinator,
)
from flwr_byz.clients.malicious import AttackInputs, coordinator_vector, make_malicious_client
from flwr_byz.schema import ClientConfig

K, F, D = 7, 3, 40  # honest vectors, attackers (partitions 0..2), dimension
N = K + F

CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "alie": ("alie", {"z": 1.5}, "honest"),
    "ipm": ("ipm", {"eps": 0.3}, "honest"),
    "omniscient_negative": ("omniscient_negative", {"scale": 2.0}, "honest"),
    "lp_coordinate": ("lp_coordinate", {}, "honest"),
    "alie_colluding": ("alie", {"omniscient": False}, "colluder"),
}


def _cfg(attack: str, options: dict[str, Any], partition: int) -> ClientConfig:
    run_config = {
        "attack": attack,
        "attack-options": json.dumps(options),
        "num-byzantine": F,
        "rule": "krum",
    }
    return ClientConfig.from_configs(run_config, {"partition-id": partition, "num-partitions": N})


def _inputs(cfg: ClientConfig, rnd: int, known: torch.Tensor | None = None) -> AttackInputs:
    return AttackInputs(
        cfg=cfg, context=None, state={}, rnd=rnd, learning_rate=0.1, n=N, f=F, known=known
    )  # type: ignore[arg-type]


def _publish_round(client: CoordinatorClient, run: str, rnd: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for pid in range(F, N):  # honest partitions, published out of order
        client.publish(run, rnd, "honest", pid, torch.randn(D, generator=generator))
    for pid in reversed(range(F)):  # the colluders' own honest vectors
        client.publish(run, rnd, "colluder", pid, torch.randn(D, generator=generator) + 1.0)


@pytest.fixture()
def coordinator():
    handle = start_coordinator("127.0.0.1:0")
    yield handle
    handle.stop()


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the attacks the coordinator computed (one entry per computation)."""
    calls: list[str] = []
    original = malicious.vector_for_spec

    def counting(spec: dict[str, Any], known: torch.Tensor) -> torch.Tensor:
        calls.append(spec["attack"])
        return original(spec, known)

    monkeypatch.setattr(malicious, "vector_for_spec", counting)
    return calls


@pytest.mark.parametrize("case", list(CASES))
def test_coordinator_vector_equals_each_attackers_own_computation(
    coordinator, counted, case: str
) -> None:
    attack, options, kind = CASES[case]
    client = CoordinatorClient(coordinator.address, timeout=10)
    _publish_round(client, "run-7", 2, seed=3)
    expected_count = K if kind == "honest" else F
    for pid in range(F):
        cfg = _cfg(attack, options, pid)
        attacker = make_malicious_client(cfg)
        assert attacker.coordinator_kind == kind
        # today's path (flwr_byz.clients.app): fetch what the threat model allows, compute locally
        _, known = client.fetch("run-7", 2, kind, expected_count)
        own = attacker.submit(_inputs(cfg, 2, known))
        served = coordinator_vector(attacker, client, "run-7", _inputs(cfg, 2))
        assert served.dtype == torch.float32 and served.shape == (D,)
        assert torch.equal(served, own.to(torch.float32))
    assert counted == [attack]  # computed once for the F attackers


def test_concurrent_attackers_share_one_computation(coordinator, counted) -> None:
    attack, options, _ = CASES["ipm"]
    client = CoordinatorClient(coordinator.address, timeout=10)
    results: dict[int, torch.Tensor] = {}

    def attacker(pid: int) -> None:
        cfg = _cfg(attack, options, pid)
        results[pid] = coordinator_vector(make_malicious_client(cfg), client, 1, _inputs(cfg, 5))

    threads = [threading.Thread(target=attacker, args=(pid,)) for pid in range(F)]
    for thread in threads:
        thread.start()  # they wait for the honest vectors, published below
    _publish_round(client, 1, 5, seed=9)
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(results) == list(range(F))
    assert all(torch.equal(results[0], results[pid]) for pid in range(F))
    assert counted == [attack]


def test_rounds_and_specs_are_cached_separately(coordinator, counted) -> None:
    client = CoordinatorClient(coordinator.address, timeout=10)
    _publish_round(client, "r", 1, seed=1)
    _publish_round(client, "r", 2, seed=2)
    spec = make_malicious_client(_cfg("ipm", {"eps": 0.3}, 0)).attack_spec(N, F)
    other = {**spec, "options": {"eps": 0.5}}
    one = client.attack_vector("r", 1, spec, K)[1]
    two = client.attack_vector("r", 2, spec, K)[1]
    three = client.attack_vector("r", 1, other, K)[1]
    assert not torch.equal(one, two) and torch.allclose(three, one * 0.5 / 0.3, rtol=1e-5)
    assert counted == ["ipm", "ipm", "ipm"]
    client.attack_vector("r", 1, spec, K)
    assert len(counted) == 3  # cached


def test_the_threat_model_is_the_attacks_own(coordinator) -> None:
    client = CoordinatorClient(coordinator.address, timeout=1)
    _publish_round(client, "t", 1, seed=4)
    colluding = make_malicious_client(_cfg("alie", {"omniscient": False}, 0))
    spec = colluding.attack_spec(N, F)
    # the coordinator decides what the attack sees: a request cannot ask for honest vectors
    header = {"op": "attack", "run": "t", "round": 1, "spec": spec, "kind": "honest"}
    with pytest.raises(CoordinatorError, match="computed from 'colluder' vectors"):
        client._request({**header, "expected": K, "timeout": 1.0})
    partitions, _ = client.attack_vector("t", 1, spec, F)
    assert partitions == list(range(F))  # the colluders' own, not the honest ones
    # attacks that use their own data or vector are not computed by the coordinator
    for attack in ("alie_backdoor", "sign_flip", "gaussian"):
        bad = {**spec, "attack": attack, "options": {}}
        with pytest.raises(CoordinatorError, match="not computed by the coordinator"):
            client.attack_vector("t", 1, bad, F)
        with pytest.raises(ValueError, match="not computed by the coordinator"):
            make_malicious_client(_cfg(attack, {}, 0)).attack_spec(N, F)
    with pytest.raises(CoordinatorError, match="unknown keys"):
        client.attack_vector("t", 1, {**spec, "partition": 3}, F)


def test_waits_are_bounded_and_a_timeout_is_not_cached(coordinator, counted) -> None:
    client = CoordinatorClient(coordinator.address, timeout=0.3)
    spec = make_malicious_client(_cfg("ipm", {}, 0)).attack_spec(N, F)
    with pytest.raises(CoordinatorTimeoutError, match="0 of 7"):
        client.attack_vector("w", 1, spec, K)
    _publish_round(client, "w", 1, seed=5)
    partitions, vector = client.attack_vector("w", 1, spec, K)
    assert partitions == list(range(F, N)) and vector.shape == (D,)
    assert counted == ["ipm"]


def test_a_failing_attack_is_one_error_for_every_attacker(coordinator, counted) -> None:
    client = CoordinatorClient(coordinator.address, timeout=2)
    _publish_round(client, "e", 1, seed=6)
    spec = make_malicious_client(_cfg("alie", {"z": 1.0}, 0)).attack_spec(N, F)
    spec = {**spec, "options": {"z": 1.0, "sigma": "neither"}}
    for _ in range(2):
        with pytest.raises(CoordinatorError, match="failed"):
            client.attack_vector("e", 1, spec, K)
    assert counted == ["alie"]


def test_the_coordinator_limits_apply_to_the_attack_op() -> None:
    with start_coordinator("127.0.0.1:0", token="s3cret") as handle:
        spec = make_malicious_client(_cfg("ipm", {}, 0)).attack_spec(N, F)
        with pytest.raises(CoordinatorError, match="token"):
            CoordinatorClient(handle.address, timeout=1, token="wrong").attack_vector(
                "x", 1, spec, K
            )
        client = CoordinatorClient(handle.address, timeout=1, token="s3cret")
        for timeout in (0, -1.0, float("inf"), "1"):
            header = {"op": "attack", "run": "x", "round": 1, "spec": spec, "expected": K}
            with pytest.raises(CoordinatorError, match="timeout"):
                client._request({**header, "timeout": timeout})
        # an attack request carries no payload: the frame cap refuses one
        host, port = handle.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            header = json.dumps(
                {
                    "op": "attack",
                    "run": "x",
                    "round": 1,
                    "spec": spec,
                    "expected": K,
                    "timeout": 1.0,
                    "token": "s3cret",
                    "nbytes": 8,
                }  # fmt: skip
            ).encode()
            sock.sendall(struct.pack(">I", len(header)) + header + b"\0" * 8)
            (length,) = struct.unpack(">I", sock.recv(4))
            reply = json.loads(sock.recv(length))
        assert reply["ok"] is False and "out of bounds" in reply["error"]


def test_a_request_waiting_on_another_computation_says_what_that_one_waits_for() -> None:
    """The second colluder's timeout names the honest vectors the first one is still waiting for
    (not only "being computed by another request")."""
    from flwr_byz.clients.coordinator import _Store

    store = _Store()
    store.publish("r", 1, "honest", 4, struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
    first = threading.Thread(
        target=lambda: pytest.raises(
            CoordinatorTimeoutError, store.attack, "r", 1, "honest", 5, 2.0, "s", lambda p, b: b
        )
    )
    first.start()  # it takes the computation and waits for 5 honest vectors
    while ("r", 1, "honest", 5, "s") not in store._attacks:
        threading.Event().wait(0.01)
    with pytest.raises(CoordinatorTimeoutError) as raised:
        store.attack("r", 1, "honest", 5, 0.2, "s", lambda p, b: b)
    first.join(timeout=10)
    message = str(raised.value)
    assert "being computed by another request" in message
    assert "honest vectors: 1 of 5 expected arrived" in message
