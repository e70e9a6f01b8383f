"""The colluding coordinator: a small TCP service the adversary uses to share vectors in a round.

Omniscient attacks (ALIE, IPM, l_p, the omniscient negative sum) need the honest vectors of the
same round; non-omniscient ALIE needs the colluders' own honest vectors. Honest clients of a run
under an omniscient attack publish the vector they send (this models the adversary eavesdropping
on the channel), colluders publish their own honest vector, and each Byzantine client fetches what
its threat model allows, keyed by (run id, round, kind) and ordered by partition id. For attacks
whose vector is the same for every colluder, the "attack" op computes that vector once per round
from the vectors the attack may know (the coordinator, not the request, decides which: see
``flwr_byz.clients.malicious.MaliciousClient.coordinator_kind``) and serves the one vector (d
floats) to
every attacker of the round.

Wire format (never pickle): each frame is a 4-byte big-endian header length, a UTF-8 JSON header,
then ``header["nbytes"]`` raw little-endian float32 bytes. Waits are bounded: a fetch that does not
see the expected count within its timeout gets an error naming the round and the counts, and an
unreachable address fails at connect time.

What it holds is bounded: a frame's payload is at most ``max_payload`` bytes (and, once a run
has published, exactly that run's vector size), idle connections are closed after
``idle_timeout`` s, at most ``max_connections`` are served at once (others get an error reply),
fetch timeouts must be finite and positive (capped at ``MAX_FETCH_TIMEOUT``), a run's vectors are
freed by an ``end`` request or ``run_expiry`` s after its last request, and malformed frames get an
error reply, never a traceback. With a shared ``token`` (``--token`` or ``$FLWR_BYZ_COORDINATOR_
TOKEN``) only requests carrying it may publish or fetch; listening beyond loopback without one is
refused unless explicitly allowed.

Run it standalone with ``python -m flwr_byz.clients.coordinator --address HOST:PORT`` or in a
thread with
``start_coordinator("127.0.0.1:0")``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import ipaddress
import json
import math
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
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
    "TOKEN_ENV",
    "check_timeout",
    "main",
    "parse_address",
    "start_coordinator",
]

KINDS = ("honest", "colluder")
_HEADER = struct.Struct(">I")
MAX_HEADER_BYTES = 1 << 16
MAX_PAYLOAD_BYTES = 1 << 33  # what a client accepts in a reply (k vectors)
DEFAULT_MAX_PAYLOAD = 1 << 28  # one published vector: 256 MiB = 64 M float32 values
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_RUN_EXPIRY = 3600.0
MAX_FETCH_TIMEOUT = 86400.0
MAX_EXPECTED = 1 << 20
MAX_ATTACK_SPECS = 16  # distinct attack specs computed per (run, round)
LISTEN_BACKLOG = 512
KEEP_ROUNDS = 2  # rounds kept per run (older ones are dropped to bound memory)
TOKEN_ENV = "FLWR_BYZ_COORDINATOR_TOKEN"
_PENDING = object()  # an attack vector being computed


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


def _recv_header(sock: socket.socket) -> dict[str, Any]:
    (length,) = _HEADER.unpack(_read_exact(sock, _HEADER.size))
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"frame header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_read_exact(sock, length).decode())
    except RecursionError:
        raise ValueError("frame header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError("frame header must be a JSON object")
    return header


def _nbytes(header: dict[str, Any], limit: int) -> int:
    nbytes = header.get("nbytes", 0)
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= limit:
        raise ValueError(f"frame payload of {nbytes!r} bytes is out of bounds (0..{limit})")
    return nbytes


def _recv_frame(
    sock: socket.socket, limit: int = MAX_PAYLOAD_BYTES
) -> tuple[dict[str, Any], bytes]:
    header = _recv_header(sock)
    return header, _read_exact(sock, _nbytes(header, limit))


def _int(header: dict[str, Any], key: str, low: int, high: int) -> int:
    """``header[key]`` as an int in ``[low, high]`` (a clear ValueError otherwise)."""
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_timeout(value: Any, name: str = "timeout", high: float = MAX_FETCH_TIMEOUT) -> float:
    """A finite, positive number of seconds (at most ``high``), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= high:
        raise ValueError(f"{name} must be finite and in (0, {high:g}] seconds, got {value!r}")
    return seconds


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on the local machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Store:
    """Thread-safe vectors keyed by (run, round, kind) -> {partition id: float32 bytes}.

    A run's vectors are freed by :meth:`end` or ``run_expiry`` s after its last request."""

    def __init__(self, run_expiry: float = DEFAULT_RUN_EXPIRY) -> None:
        self._vectors: dict[tuple[str, int, str], dict[int, bytes]] = {}
        # (run, round, kind, expected, spec JSON) -> _PENDING, ("ok", partitions, bytes) or
        # ("error", message): the attack vectors the "attack" op computed, once each
        self._attacks: dict[tuple[str, int, str, int, str], Any] = {}
        self._sizes: dict[str, int] = {}  # run -> bytes of one vector
        self._seen: dict[str, float] = {}  # run -> last request (monotonic)
        self._changed = threading.Condition()
        self._stopping = False
        self.run_expiry = float(run_expiry)

    def _touch(self, run: str) -> None:
        now = time.monotonic()
        self._seen[run] = now
        for other in [r for r, seen in self._seen.items() if now - seen > self.run_expiry]:
            self._drop(other)

    def _drop(self, run: str) -> None:
        for key in [key for key in self._vectors if key[0] == run]:
            del self._vectors[key]
        for done in [done for done in self._attacks if done[0] == run]:
            del self._attacks[done]
        self._sizes.pop(run, None)
        self._seen.pop(run, None)

    def vector_bytes(self, run: str) -> int | None:
        """The size of the vectors already published for ``run`` (None when none yet)."""
        with self._changed:
            return self._sizes.get(run)

    def runs(self) -> list[str]:
        """The runs whose vectors are held."""
        with self._changed:
            return sorted(self._seen)

    def end(self, run: str) -> None:
        """Free everything held for ``run``."""
        with self._changed:
            self._drop(run)
            self._changed.notify_all()

    def publish(self, run: str, rnd: int, kind: str, partition: int, payload: bytes) -> None:
        with self._changed:
            self._touch(run)
            size = self._sizes.get(run)
            if size is not None and len(payload) != size:
                raise ValueError(
                    f"vector of {len(payload) // 4} values does not match the "
                    f"{size // 4} already published for run {run}, round {rnd}"
                )
            self._sizes[run] = len(payload)
            slot = self._vectors.setdefault((run, rnd, kind), {})
            slot[partition] = payload
            stale = [key for key in self._vectors if key[0] == run and key[1] <= rnd - KEEP_ROUNDS]
            for key in stale:
                del self._vectors[key]
            for done in [k for k in self._attacks if k[0] == run and k[1] <= rnd - KEEP_ROUNDS]:
                del self._attacks[done]
            self._changed.notify_all()

    def fetch(
        self, run: str, rnd: int, kind: str, expected: int, timeout: float
    ) -> tuple[list[int], bytes]:
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        with self._changed:
            self._touch(run)
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
                self._seen[run] = time.monotonic()

    def attack(
        self,
        run: str,
        rnd: int,
        kind: str,
        expected: int,
        timeout: float,
        spec_key: str,
        compute: Callable[[list[int], bytes], bytes],
    ) -> tuple[list[int], bytes, bool]:
        """The round's attack vector for ``spec_key``, computed once: the first request waits
        (like ``fetch``) for ``expected`` vectors of ``kind`` and runs ``compute`` on them (outside
        the lock), later ones get the cached result (or its error). Returns the partitions it was
        computed from, the vector's bytes and whether this request computed it."""
        timeout = check_timeout(timeout)
        deadline = time.monotonic() + timeout
        key = (run, rnd, kind, expected, spec_key)
        with self._changed:
            self._touch(run)
            while True:
                entry = self._attacks.get(key)
                if entry is None:
                    pending = [k for k in self._attacks if k[:2] == (run, rnd)]
                    if len(pending) >= MAX_ATTACK_SPECS:
                        raise ValueError(
                            f"run {run}, round {rnd} already holds {len(pending)} attack vectors "
                            f"(at most {MAX_ATTACK_SPECS} attack specs per round)"
                        )
                    self._attacks[key] = _PENDING  # this request computes it
                    break
                if entry is not _PENDING:
                    if entry[0] == "error":
                        raise ValueError(entry[1])
                    return entry[1], entry[2], False
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    arrived = len(self._vectors.get((run, rnd, kind), {}))
                    raise CoordinatorTimeoutError(
                        f"timed out after {timeout:g} s waiting for the attack vector of run "
                        f"{run}, round {rnd} (being computed by another request, which waits "
                        f"for {kind} vectors: {arrived} of {expected} expected arrived)"
                    )
                self._changed.wait(left)
                self._seen[run] = time.monotonic()
        try:
            left = max(deadline - time.monotonic(), 1e-3)
            partitions, body = self.fetch(run, rnd, kind, expected, left)
            result: tuple[Any, ...] = ("ok", partitions, compute(partitions, body))
        except CoordinatorError:  # no vectors yet: a later request may try again
            with self._changed:
                if self._attacks.get(key) is _PENDING:
                    del self._attacks[key]
                self._changed.notify_all()
            raise
        except (ValueError, RuntimeError, TypeError, KeyError, OverflowError) as error:
            result = ("error", f"attack {spec_key} failed: {type(error).__name__}: {error}")
        except BaseException:
            with self._changed:
                if self._attacks.get(key) is _PENDING:
                    del self._attacks[key]
                self._changed.notify_all()
            raise
        with self._changed:
            if self._attacks.get(key) is _PENDING:  # not dropped (run ended) meanwhile
                self._attacks[key] = result
            self._changed.notify_all()
        if result[0] == "error":
            raise ValueError(result[1])
        return result[1], result[2], True

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        server, sock = self.server, self.request
        sock.settimeout(server.idle_timeout)  # an idle or stalled connection is closed
        while True:
            try:
                header = _recv_header(sock)
                payload = _read_exact(sock, _nbytes(header, server.payload_limit(header)))
            except (ConnectionError, OSError):
                return
            except Exception as error:  # malformed frame: an error reply, never a traceback
                self._reply({"ok": False, "error": f"bad frame: {error}"})
                return
            if not server.authorised(header):
                self._reply({"ok": False, "error": "missing or wrong coordinator token"})
                return
            try:
                reply, body = self._dispatch(server.store, header, payload)
            except (CoordinatorError, ValueError, KeyError, TypeError, OverflowError) as error:
                reply, body = {"ok": False, "error": str(error)}, b""
            if not self._reply(reply, body):
                return

    def _reply(self, header: dict[str, Any], body: bytes = b"") -> bool:
        try:
            _send_frame(self.request, header, body)
        except OSError:
            return False
        return True

    @staticmethod
    def _dispatch(
        store: _Store, header: dict[str, Any], payload: bytes
    ) -> tuple[dict[str, Any], bytes]:
        op = header.get("op")
        if op == "ping":
            return {"ok": True}, b""
        if op == "end":
            store.end(str(header.get("run")))
            return {"ok": True}, b""
        if op == "attack":
            return _attack_op(store, header)
        if op not in ("publish", "fetch"):
            raise ValueError(f"unknown op {op!r}; expected ping, publish, fetch, attack or end")
        kind = header.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        run, rnd = str(header.get("run")), _int(header, "round", 0, 1 << 62)
        if op == "publish":
            if len(payload) % 4:
                raise ValueError("payload must hold float32 values (a multiple of 4 bytes)")
            store.publish(run, rnd, kind, _int(header, "partition", 0, 1 << 31), payload)
            return {"ok": True}, b""
        expected = _int(header, "expected", 0, MAX_EXPECTED)
        timeout = check_timeout(header.get("timeout"))
        partitions, body = store.fetch(run, rnd, kind, expected, timeout)
        return {"ok": True, "partitions": partitions}, body


def _attack_op(store: _Store, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The "attack" op: the round's one attack vector (d float32 values), computed once.

    The header carries ``spec`` (``MaliciousClient.attack_spec``: attack, options, rule, n, f),
    ``expected`` and ``timeout`` like a fetch. Which vectors the attack is computed from is
    decided here from the attack itself (``coordinator_kind``: the round's honest vectors for an
    omniscient attack, the colluders' own otherwise), never by the request; a ``kind`` in the
    header must agree with it."""
    from .malicious import client_for_spec, vector_for_spec  # torch and flwr only when used

    spec = header.get("spec")
    kind = client_for_spec(spec).coordinator_kind  # a ValueError unless spec is a valid dict
    assert kind is not None and isinstance(spec, dict)
    claimed = header.get("kind", kind)
    if claimed != kind:
        raise ValueError(
            f"attack {spec.get('attack')!r} is computed from {kind!r} vectors, not {claimed!r}"
        )
    run, rnd = str(header.get("run")), _int(header, "round", 0, 1 << 62)
    expected = _int(header, "expected", 1, MAX_EXPECTED)
    timeout = check_timeout(header.get("timeout"))
    spec_key = json.dumps(spec, sort_keys=True, allow_nan=False)

    def compute(partitions: list[int], body: bytes) -> bytes:
        known = torch.from_numpy(np.frombuffer(body, dtype="<f4").copy())
        vector = vector_for_spec(spec, known.reshape(len(partitions), -1))
        return vector.numpy().astype("<f4").tobytes()

    partitions, body, computed = store.attack(run, rnd, kind, expected, timeout, spec_key, compute)
    return {"ok": True, "partitions": partitions, "kind": kind, "computed": computed}, body


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        address: tuple[str, int],
        token: str | None = None,
        allow_no_token: bool = False,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        run_expiry: float = DEFAULT_RUN_EXPIRY,
    ) -> None:
        if not token and not allow_no_token and not is_loopback(address[0]):
            raise ValueError(
                f"refusing to listen on {address[0]!r} (beyond loopback) without a token: pass "
                f"--token / ${TOKEN_ENV} (the run's nodes need the same), or allow it explicitly "
                "(--allow-no-token)"
            )
        self.token = token or None
        self.max_payload = int(max_payload)
        self.idle_timeout = check_timeout(idle_timeout, "idle timeout")
        if int(max_connections) < 1 or self.max_payload < 4:
            raise ValueError("max_connections must be >= 1 and max_payload >= 4 bytes")
        self._slots = threading.BoundedSemaphore(int(max_connections))
        self.store = _Store(check_timeout(run_expiry, "run expiry", high=math.inf))
        super().__init__(address, _Handler)

    def payload_limit(self, header: dict[str, Any]) -> int:
        """The largest payload ``header`` may carry: the run's vector size once known."""
        if header.get("op") != "publish":
            return 0
        run = str(header.get("run"))
        known = self.store.vector_bytes(run)
        if known is None:
            return self.max_payload
        claimed = header.get("nbytes")
        if isinstance(claimed, int) and claimed != known:
            raise ValueError(
                f"vector of {claimed // 4} values does not match the {known // 4} already "
                f"published for run {run}"
            )
        return known

    def authorised(self, header: dict[str, Any]) -> bool:
        if self.token is None or header.get("op") == "ping":
            return True
        given = header.get("token")
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode())

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # connection cap: refuse, do not queue
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                _send_frame(
                    request, {"ok": False, "error": "coordinator busy: too many connections"}
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _bound_address(server: socketserver.TCPServer) -> tuple[str, int]:
    """``(host, port)`` of the server's bound socket: ``server_address``, whose host is a str for
    the AF_INET/AF_INET6 sockets served here (typeshed's type also allows AF_UNIX bytes paths)."""
    host, port = server.server_address[:2]
    assert isinstance(host, str) and isinstance(port, int)
    return host, port


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


def start_coordinator(
    address: str = "127.0.0.1:0", token: str | None = None, **limits: Any
) -> CoordinatorHandle:
    """Serve the coordinator in a daemon thread (port 0 picks a free one); returns its handle.

    ``limits``: ``allow_no_token``, ``max_payload``, ``idle_timeout``, ``max_connections``,
    ``run_expiry`` (see the module docstring)."""
    host, port = parse_address(address)
    server = _Server((host, port), token=token, **limits)
    bound_host, bound_port = _bound_address(server)
    thread = threading.Thread(target=server.serve_forever, name="flwr-byz-coordinator", daemon=True)
    thread.start()
    return CoordinatorHandle(f"{bound_host}:{bound_port}", server, thread)


class CoordinatorClient:
    """Talks to a coordinator: ``publish`` a vector, ``fetch`` the vectors of a round, or get the
    round's one ``attack_vector``.

    ``timeout``: how long a fetch waits for the expected count (the run config's
    ``coordinator-timeout``); ``connect_timeout``: how long to try to reach the address.
    """

    def __init__(
        self,
        address: str,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        token: str | None = None,
    ) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.timeout = check_timeout(timeout, "coordinator timeout")
        self.connect_timeout = check_timeout(connect_timeout, "coordinator connect timeout")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None

    def _request(
        self, header: dict[str, Any], payload: bytes = b"", wait: float = 0.0
    ) -> tuple[dict[str, Any], bytes]:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as error:
            raise CoordinatorError(
                f"cannot reach the colluding coordinator at {self.address} "
                f"(within {self.connect_timeout:g} s): {error}; start it with "
                f"'python -m flwr_byz.clients.coordinator --address {self.address}' or fix "
                "the run config's coordinator-address"
            ) from None
        if self.token is not None:
            header = {**header, "token": self.token}
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

    def end_run(self, run: int | str) -> None:
        """Free everything the coordinator holds for ``run`` (call when the run ends)."""
        self._request({"op": "end", "run": str(run)})

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

    def attack_vector(
        self, run: int | str, rnd: int, spec: dict[str, Any], expected: int
    ) -> tuple[list[int], Tensor]:
        """The round's attack vector for ``spec`` (``MaliciousClient.attack_spec``), computed
        once by the coordinator from the ``expected`` vectors the attack may know (waiting at
        most ``timeout`` s for them, as ``fetch`` does) and cached for the round's other
        attackers. Returns the partition ids it was computed from and the ``(d,)`` float32
        vector. A failing attack computation is an error for every attacker of the round."""
        header = {
            "op": "attack",
            "run": str(run),
            "round": int(rnd),
            "spec": spec,
            "expected": int(expected),
            "timeout": self.timeout,
        }
        reply, body = self._request(header, wait=2 * self.timeout)
        partitions = [int(pid) for pid in reply["partitions"]]
        return partitions, torch.from_numpy(np.frombuffer(body, dtype="<f4").copy())


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m flwr_byz.clients.coordinator --address HOST:PORT`` serves until
    interrupted."""
    parser = argparse.ArgumentParser(description="flwr-byz colluding coordinator")
    parser.add_argument("--address", default="127.0.0.1:7000", help="host:port to listen on")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV, ""),
        help=f"shared token the run's nodes must send (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--allow-no-token",
        action="store_true",
        help="listen beyond loopback without a token (anyone reaching the port may push vectors)",
    )
    parser.add_argument(
        "--max-frame-mb", type=float, default=DEFAULT_MAX_PAYLOAD / 2**20, help="largest vector"
    )
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    parser.add_argument("--run-expiry", type=float, default=DEFAULT_RUN_EXPIRY)
    args = parser.parse_args(argv)
    host, port = parse_address(args.address)
    try:
        server = _Server(
            (host, port),
            token=args.token or None,
            allow_no_token=args.allow_no_token,
            max_payload=int(args.max_frame_mb * 2**20),
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            run_expiry=args.run_expiry,
        )
    except ValueError as err:
        parser.error(str(err))
    with server:
        bound_host, bound_port = _bound_address(server)
        print(f"flwr-byz coordinator listening on {bound_host}:{bound_port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
