"""The colluding coordinator: framing, ordering, bounded waits, clear errors."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import uuid

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz.clients.coordinator import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorTimeoutError,
    parse_address,
    start_coordinator,
)


@pytest.fixture()
def coordinator():
    handle = start_coordinator("127.0.0.1:0")
    yield handle
    handle.stop()


def test_fetch_returns_vectors_ordered_by_partition(coordinator) -> None:
    client = CoordinatorClient(coordinator.address, timeout=5)
    vectors = {pid: torch.randn(7, dtype=torch.float64) for pid in (4, 0, 9)}
    for pid, vector in vectors.items():  # published out of order
        client.publish(12, 3, "honest", pid, vector)
    partitions, known = client.fetch(12, 3, "honest", 3)
    assert partitions == [0, 4, 9]
    expected = torch.stack([vectors[pid].float() for pid in (0, 4, 9)])
    assert known.dtype == torch.float32 and torch.equal(known, expected)
    # other rounds, runs and kinds are separate
    with pytest.raises(CoordinatorTimeoutError):
        CoordinatorClient(coordinator.address, timeout=0.2).fetch(12, 4, "honest", 1)
    with pytest.raises(CoordinatorTimeoutError):
        CoordinatorClient(coordinator.address, timeout=0.2).fetch(12, 3, "colluder", 1)


def test_fetch_waits_for_late_publishers(coordinator) -> None:
    client = CoordinatorClient(coordinator.address, timeout=10)
    result = {}

    def fetch() -> None:
        result["value"] = client.fetch("run", 1, "colluder", 2)

    waiter = threading.Thread(target=fetch)
    waiter.start()
    time.sleep(0.2)
    client.publish("run", 1, "colluder", 1, torch.ones(3))
    client.publish("run", 1, "colluder", 0, torch.zeros(3))
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    partitions, known = result["value"]
    assert partitions == [0, 1] and torch.equal(known, torch.tensor([[0.0] * 3, [1.0] * 3]))


def test_timeout_names_address_round_and_counts(coordinator) -> None:
    client = CoordinatorClient(coordinator.address, timeout=0.3)
    client.publish(5, 7, "honest", 2, torch.ones(4))
    started = time.monotonic()
    with pytest.raises(CoordinatorTimeoutError) as info:
        client.fetch(5, 7, "honest", 3)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert coordinator.address in message
    assert "round 7" in message and "1 of 3" in message and "[2]" in message


def test_unreachable_address_fails_fast() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = CoordinatorClient(f"127.0.0.1:{port}", timeout=60, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(CoordinatorError, match=f"cannot reach .* 127.0.0.1:{port}"):
        client.fetch(1, 1, "honest", 1)
    assert time.monotonic() - started < 5


def test_mismatched_dimension_and_bad_frames_are_refused(coordinator) -> None:
    client = CoordinatorClient(coordinator.address, timeout=1)
    client.publish(1, 1, "honest", 0, torch.ones(4))
    with pytest.raises(CoordinatorError, match="does not match"):
        client.publish(1, 1, "honest", 1, torch.ones(5))
    host, port = parse_address(coordinator.address)
    with socket.create_connection((host, port), timeout=2) as sock:  # not JSON: an error reply
        sock.sendall(struct.pack(">I", 5) + b"\x80abcd")
        sock.settimeout(2)
        length = struct.unpack(">I", sock.recv(4))[0]
        reply = json.loads(sock.recv(length))
        assert reply["ok"] is False
    with socket.create_connection((host, port), timeout=2) as sock:  # unknown kind
        header = json.dumps({"op": "fetch", "run": "1", "round": 1, "kind": "x"}).encode()
        sock.sendall(struct.pack(">I", len(header)) + header)
        length = struct.unpack(">I", sock.recv(4))[0]
        assert "kind must be one of" in json.loads(sock.recv(length))["error"]
    client.ping()  # still serving


def test_bad_address_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="host:port"):
        CoordinatorClient("localhost")


def test_cli_serves(tmp_path) -> None:
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "flwr_byz.clients.coordinator", "--address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening" in process.stdout.readline()
        CoordinatorClient(f"127.0.0.1:{port}", timeout=1).ping()
    finally:
        process.terminate()
        process.wait(timeout=10)


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64
    ),
    partitions=st.lists(st.integers(0, 50), min_size=1, max_size=5, unique=True),
)
def test_vectors_travel_bit_exactly(shared_coordinator, values, partitions) -> None:
    """Any float32 (NaN, inf, subnormal: what bit flips produce) arrives bit for bit."""
    client = CoordinatorClient(shared_coordinator.address, timeout=5)
    run = f"prop-{uuid.uuid4()}"
    sent = {}
    for offset, pid in enumerate(partitions):
        vector = torch.tensor(values, dtype=torch.float32).roll(offset)
        sent[pid] = vector
        client.publish(run, 1, "honest", pid, vector)
    ids, known = client.fetch(run, 1, "honest", len(partitions))
    assert ids == sorted(partitions)
    expected = torch.stack([sent[pid] for pid in ids])
    assert torch.equal(known.view(torch.int32), expected.view(torch.int32))


@pytest.fixture(scope="module")
def shared_coordinator():
    handle = start_coordinator("127.0.0.1:0")
    yield handle
    handle.stop()


def test_old_rounds_are_dropped(coordinator) -> None:
    client = CoordinatorClient(coordinator.address, timeout=0.2)
    client.publish("r", 1, "honest", 0, torch.ones(2))
    client.publish("r", 2, "honest", 0, torch.ones(2))
    assert client.fetch("r", 1, "honest", 1)[0] == [0]  # the previous round is kept
    client.publish("r", 3, "honest", 0, torch.ones(2))
    with pytest.raises(CoordinatorTimeoutError, match="0 of 1"):
        client.fetch("r", 1, "honest", 1)
    client.publish("other-run", 9, "honest", 0, torch.ones(2))  # other runs are untouched
    assert client.fetch("r", 3, "honest", 1)[0] == [0]
