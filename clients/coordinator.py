"""The colluding coordinator: a small TCP service the adversary uses to share vectors in a round.

Omniscient attacks (ALIE, IPM, l_p, the omniscient negative sum) need the honest vectors of the
same round; non-omniscient ALIE needs the colluders' own honest vectors. Honest clients of a run
under an omniscient attack publish the vector they send (this models the adversary eavesdropping
on the channel), colluders publish their own honest vector, and each Byzantine client fetches what
its threat model allows, keyed by (run id, round, kind) and ordered by partition id.

Wire format (never pickle): each frame is a 4-byte big-endian header length, a UTF-8 JSON header,
then ``header["nbytes"]`` raw little-endian float32 bytes. Waits are bounded: a fetch that does not
see the expected count within its timeout gets an error naming the round and the counts, and an
unreachable address fails at connect time.

Run it standalone with ``python -m clients.coordinator --address HOST:PORT`` or in a thread with
``start_coordinator("127.0.0.1:0")``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CoordinatorClient",
    "CoordinatorError",
    "CoordinatorHandle",
    "CoordinatorTimeoutError",
    "KINDS",
    "main",
    "parse_address",
    "start_coordinator",
]

KINDS = ("honest", "colluder")
_HEADER = struct.Struct(">I")
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 33
KEEP_ROUNDS = 2  # rounds kept per run (older ones are dropped to bound memory)


class CoordinatorError(RuntimeError):
    """The coordinator could not be reached or refused a request."""


class CoordinatorTimeoutError(CoordinatorError, TimeoutError):
    """A fetch did not see the expected number of vectors in time."""


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``, with a clear error for anything else."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"coordinator address must look like 'host:port', got {address!r}")
    return host.strip("[]"), int(port)


def _read_exact(sock: socket.socket, count: int) -> bytes:
    chunks, missing = [], count
    while missing:
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            raise ConnectionError(f"connection closed with {missing} of {count} bytes unread")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _send_frame(sock: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    header = {**header, "nbytes": len(payload)}
    encoded = json.dumps(header).encode()
    sock.sendall(_HEADER.pack(len(encoded)) + encoded + payload)


def _recv_frame(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    (length,) = _HEADER.unpack(_read_exact(sock, _HEADER.size))
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"frame header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    header = json.loads(_read_exact(sock, length).decode())
    if not isinstance(header, dict):
        raise ValueError("frame header must be a JSON object")
    nbytes = int(header.get("nbytes", 0))
    if not 0 <= nbytes <= MAX_PAYLOAD_BYTES:
        raise ValueError(f"frame payload of {nbytes} bytes is out of bounds")
    return header, _read_exact(sock, nbytes)


class _Store:
    """Thread-safe vectors keyed by (run, round, kind) -> {partition id: float32 bytes}."""

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, int, str], dict[int, bytes]] = {}
        self._changed = threading.Condition()
        self._stopping = False

    def publish(self, run: str, rnd: int, kind: str, partition: int, payload: bytes) -> None:
        with self._changed:
            slot = self._vectors.setdefault((run, rnd, kind), {})
            sizes = {len(value) for value in slot.values()}
            if sizes and len(payload) not in sizes:
                raise ValueError(
                    f"vector of {len(payload) // 4} values does not match the "
                    f"{sizes.pop() // 4} already published for run {run}, round {rnd}"
                )
            slot[partition] = payload
            stale = [key for key in self._vectors if key[0] == run and key[1] <= rnd - KEEP_ROUNDS]
            for key in stale:
                del self._vectors[key]
            self._changed.notify_all()

    def fetch(
        self, run: str, rnd: int, kind: str, expected: int, timeout: float
    ) -> tuple[list[int], bytes]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                slot = self._vectors.get((run, rnd, kind), {})
                if len(slot) >= expected:
                    partitions = sorted(slot)
                    return partitions, b"".join(slot[pid] for pid in partitions)
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    raise CoordinatorTimeoutError(
                        f"timed out after {timeout:g} s waiting for {kind} vectors of run {run}, "
                        f"round {rnd}: {len(slot)} of {expected} expected arrived "
                        f"(partitions {sorted(slot)})"
                    )
                self._changed.wait(left)

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        store: _Store = self.server.store  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        while True:
            try:
                header, payload = _recv_frame(sock)
            except (ConnectionError, OSError):
                return
            except ValueError as error:
                _send_frame(sock, {"ok": False, "error": f"bad frame: {error}"})
                return
            try:
                reply, body = self._dispatch(store, header, payload)
            except (CoordinatorError, ValueError, KeyError, TypeError) as error:
                reply, body = {"ok": False, "error": str(error)}, b""
            try:
                _send_frame(sock, reply, body)
            except OSError:
                return

    @staticmethod
    def _dispatch(
        store: _Store, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True}, b""
        kind = str(header["kind"])
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        run, rnd = str(header["run"]), int(header["round"])
        if op == "publish":
            if len(payload) % 4:
                raise ValueError("payload must hold float32 values (a multiple of 4 bytes)")
            store.publish(run, rnd, kind, int(header["partition"]), payload)
            return {"ok": True}, b""
        if op == "fetch":
            partitions, body = store.fetch(
                run, rnd, kind, int(header["expected"]), float(header["timeout"])
            )
            return {"ok": True, "partitions": partitions}, body
        raise ValueError(f"unknown op {op!r}; expected ping, publish or fetch")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.store = _Store()


@dataclass
class CoordinatorHandle:
    """A coordinator running in a background thread; ``address`` is ``"host:port"``."""

    address: str
    _server: _Server
    _thread: threading.Thread

    def stop(self) -> None:
        """Stop serving (waiting fetches get a timeout error) and close the socket."""
        self._server.store.stop()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> CoordinatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_coordinator(address: str = "127.0.0.1:0") -> CoordinatorHandle:
    """Serve the coordinator in a daemon thread (port 0 picks a free one); returns its handle."""
    host, port = parse_address(address)
    server = _Server((host, port))
    bound_host, bound_port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, name="flwr-byz-coordinator", daemon=True)
    thread.start()
    return CoordinatorHandle(f"{bound_host}:{bound_port}", server, thread)


class CoordinatorClient:
    """Talks to a coordinator: ``publish`` a vector, ``fetch`` the vectors of a round.

    ``timeout``: how long a fetch waits for the expected count (the run config's
    ``coordinator-timeout``); ``connect_timeout``: how long to try to reach the address.
    """

    def __init__(self, address: str, timeout: float = 60.0, connect_timeout: float = 5.0) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)

    def _request(
        self, header: dict[str, Any], payload: bytes = b"", wait: float = 0.0
    ) -> tuple[dict[str, Any], bytes]:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as error:
            raise CoordinatorError(
                f"cannot reach the colluding coordinator at {self.address} "
                f"(within {self.connect_timeout:g} s): {error}; start it with "
                f"'python -m clients.coordinator --address {self.address}' or fix "
                "the run config's coordinator-address"
            ) from None
        with sock:
            sock.settimeout(wait + self.connect_timeout + 5.0)
            try:
                _send_frame(sock, header, payload)
                reply, body = _recv_frame(sock)
            except (OSError, ValueError) as error:
                raise CoordinatorError(
                    f"coordinator at {self.address} failed during {header.get('op')}: {error}"
                ) from None
        if not reply.get("ok"):
            message = f"coordinator at {self.address}: {reply.get('error', 'unknown error')}"
            if "timed out" in str(reply.get("error", "")):
                raise CoordinatorTimeoutError(message)
            raise CoordinatorError(message)
        return reply, body

    def ping(self) -> None:
        """Raise ``CoordinatorError`` unless the coordinator answers."""
        self._request({"op": "ping"})

    def publish(self, run: int | str, rnd: int, kind: str, partition: int, vector: Tensor) -> None:
        """Store ``vector`` (sent as float32) for ``(run, rnd, kind)`` under ``partition``."""
        values = vector.detach().reshape(-1).to("cpu", torch.float32).numpy().astype("<f4")
        header = {
            "op": "publish",
            "run": str(run),
            "round": int(rnd),
            "kind": kind,
            "partition": int(partition),
        }
        self._request(header, values.tobytes())

    def fetch(self, run: int | str, rnd: int, kind: str, expected: int) -> tuple[list[int], Tensor]:
        """Wait (at most ``timeout`` s) until ``expected`` vectors of ``kind`` are in; return the
        partition ids (ascending) and the ``(k, d)`` float32 CPU tensor in that order."""
        header = {
            "op": "fetch",
            "run": str(run),
            "round": int(rnd),
            "kind": kind,
            "expected": int(expected),
            "timeout": self.timeout,
        }
        reply, body = self._request(header, wait=self.timeout)
        partitions = [int(pid) for pid in reply["partitions"]]
        flat = torch.from_numpy(np.frombuffer(body, dtype="<f4").copy())
        return partitions, flat.reshape(len(partitions), -1)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m clients.coordinator --address HOST:PORT`` serves until interrupted."""
    parser = argparse.ArgumentParser(description="flwr-byz colluding coordinator")
    parser.add_argument("--address", default="127.0.0.1:7000", help="host:port to listen on")
    args = parser.parse_args(argv)
    host, port = parse_address(args.address)
    with _Server((host, port)) as server:
        bound = server.server_address
        print(f"flwr-byz coordinator listening on {bound[0]}:{bound[1]}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
