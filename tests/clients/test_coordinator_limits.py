"""The coordinator bounds what it holds: idle connections, connection count, frame size,
timeouts, finished runs; malformed frames get an error reply; an optional shared token.
Everything listens on 127.0.0.1 only and every wait is bounded."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
import torch

from flwr_byz.clients.coordinator import (
    TOKEN_ENV,
    CoordinatorClient,
    CoordinatorError,
    main,
    parse_address,
    start_coordinator,
)


@pytest.fixture()
def coordinator():
    handle = start_coordinator("127.0.0.1:0", idle_timeout=0.5, max_connections=4)
    yield handle
    handle.stop()


def _connect(handle) -> socket.socket:
    sock = socket.create_connection(parse_address(handle.address), timeout=5)
    sock.settimeout(5)
    return sock


def _send(sock: socket.socket, header: dict | bytes, payload: bytes = b"") -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(raw)) + raw + payload)


def _reply(sock: socket.socket) -> dict:
    data = b""
    while len(data) < 4:
        chunk = sock.recv(4 - len(data))
        assert chunk, "connection closed without a reply"
        data += chunk
    (length,) = struct.unpack(">I", data)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return json.loads(body)


def test_idle_connections_are_closed(coordinator) -> None:
    with _connect(coordinator) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our 5 s timeout
        assert time.monotonic() - started < 3


def test_connections_beyond_the_cap_are_refused_then_served(coordinator) -> None:
    idle = [_connect(coordinator) for _ in range(4)]
    time.sleep(0.1)
    with _connect(coordinator) as extra:
        assert "too many connections" in _reply(extra)["error"]
    for sock in idle:
        sock.close()
    client = CoordinatorClient(coordinator.address, timeout=1)
    for _ in range(50):  # the slots free as the server sees the closes
        try:
            client.ping()
            break
        except CoordinatorError:
            time.sleep(0.05)
    else:
        pytest.fail("slots were not released")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, 0, "5", None, 1e9])
def test_fetch_timeouts_must_be_finite_and_positive(coordinator, timeout) -> None:
    with _connect(coordinator) as sock:
        started = time.monotonic()
        header = {"op": "fetch", "run": "r", "round": 1, "kind": "honest", "expected": 1}
        _send(sock, json.dumps({**header, "timeout": timeout}).encode())  # NaN as JSON NaN
        reply = _reply(sock)
        assert reply["ok"] is False and "timeout must be" in reply["error"]
        assert time.monotonic() - started < 2
    with pytest.raises(ValueError, match="finite"):
        CoordinatorClient(coordinator.address, timeout=float("nan"))


def test_many_simultaneous_requests_all_succeed() -> None:
    with start_coordinator("127.0.0.1:0") as handle:
        failures: list[str] = []
        start = threading.Barrier(200)

        def ping() -> None:
            start.wait(30)
            try:
                CoordinatorClient(handle.address, timeout=10, connect_timeout=10).ping()
            except CoordinatorError as err:
                failures.append(str(err))

        threads = [threading.Thread(target=ping) for _ in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failures == []


def test_frames_are_bounded_by_the_cap_and_the_runs_vector_size() -> None:
    with start_coordinator("127.0.0.1:0", max_payload=64) as handle:
        header = {"op": "publish", "run": "r", "round": 1, "kind": "honest", "partition": 0}
        for claimed in (8 << 30, 68):
            with _connect(handle) as sock:  # refused at once, before any payload arrives
                _send(sock, {**header, "nbytes": claimed})
                assert "out of bounds" in _reply(sock)["error"]
        client = CoordinatorClient(handle.address, timeout=1)
        client.publish("r", 1, "honest", 0, torch.ones(4))  # the run's vectors: 16 bytes
        with _connect(handle) as sock:
            _send(sock, {**header, "partition": 1, "nbytes": 64})
            assert "does not match the 4" in _reply(sock)["error"]
        with _connect(handle) as sock:  # fetch and ping carry no payload
            _send(sock, {"op": "ping", "nbytes": 16})
            assert "out of bounds" in _reply(sock)["error"]


def test_finished_and_expired_runs_are_freed() -> None:
    with start_coordinator("127.0.0.1:0", run_expiry=0.3) as handle:
        store = handle._server.store
        client = CoordinatorClient(handle.address, timeout=0.2)
        client.publish("a", 1, "honest", 0, torch.ones(3))
        client.publish("b", 1, "honest", 0, torch.ones(3))
        client.end_run("a")
        assert store.runs() == ["b"]
        time.sleep(0.5)
        client.publish("c", 1, "honest", 0, torch.ones(5))
        assert store.runs() == ["c"]  # "b" expired
        client.publish("b", 1, "honest", 0, torch.ones(7))  # a fresh "b", any size


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps({"op": "ping", "nbytes": None}).encode(),
        b'{"op": "publish", "nbytes": [1]}',
        b'{"op": "fetch", "run": "r", "round": 1e400, "kind": "honest", "expected": 1,'
        b' "timeout": 1}',
        b'{"op": "fetch", "run": "r", "round": 1, "kind": "honest", "expected": 1e400,'
        b' "timeout": 1}',
        b"[" * 5000 + b"]" * 5000,
        b'{"op": "publish", "run": "r", "round": 1, "kind": "honest", "partition": -3}',
        b'{"op": "fetch", "run": "r", "round": true, "kind": ["honest"]}',
    ],
    ids=["null-nbytes", "list-nbytes", "huge-round", "huge-expected", "nested", "neg", "types"],
)
def test_malformed_frames_get_an_error_reply(coordinator, raw, capfd) -> None:
    with _connect(coordinator) as sock:
        _send(sock, raw)
        assert _reply(sock)["ok"] is False
    CoordinatorClient(coordinator.address, timeout=1).ping()  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_a_token_guards_publish_and_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    with start_coordinator("127.0.0.1:0", token="s3cret") as handle:
        CoordinatorClient(handle.address, timeout=1).ping()  # reachability needs no token
        for token in (None, "wrong"):
            monkeypatch.delenv(TOKEN_ENV, raising=False)
            with pytest.raises(CoordinatorError, match="token"):
                CoordinatorClient(handle.address, timeout=1, token=token).publish(
                    "r", 1, "honest", 0, torch.ones(2)
                )
            with pytest.raises(CoordinatorError, match="token"):
                CoordinatorClient(handle.address, timeout=1, token=token).fetch("r", 1, "honest", 0)
        assert handle._server.store.runs() == []
        monkeypatch.setenv(TOKEN_ENV, "s3cret")  # the nodes get it from the environment
        client = CoordinatorClient(handle.address, timeout=1)
        client.publish("r", 1, "honest", 0, torch.ones(2))
        assert client.fetch("r", 1, "honest", 1)[0] == [0]


def test_listening_beyond_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match=r"beyond loopback\) without a token"):
        start_coordinator("0.0.0.0:0")  # refused before binding
    with pytest.raises(SystemExit):
        main(["--address", "0.0.0.0:0"])
    assert "--allow-no-token" in capsys.readouterr().err
    with pytest.raises(ValueError, match="idle timeout"):
        start_coordinator("127.0.0.1:0", idle_timeout=float("nan"))
