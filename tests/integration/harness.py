"""Process harness of the deployment tests: real SuperLink, SuperNodes and `flwr` CLI on loopback.

Every process is started in its own session (process group) and recorded by PID and start time;
`ProcessHarness.stop_all` (run by the fixture's finalizer, also when a test fails) stops all of
them, their groups and their descendants (the SuperExec and app processes Flower spawns in new
sessions), with SIGTERM then SIGKILL. Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FLOWER_BINARIES = ("flower-superlink", "flower-supernode", "flwr")
REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL_PREFIX = "finished:"


def missing_flower_binaries() -> list[str]:
    """The Flower executables that are not on PATH."""
    return [name for name in FLOWER_BINARIES if shutil.which(name) is None]


def require_flower_binaries() -> None:
    """Skip the calling test, with the reason, when the Flower executables are missing."""
    if missing := missing_flower_binaries():
        pytest.skip(f"Flower executables not on PATH: {', '.join(missing)}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of the Flower processes: own FLWR_HOME, no telemetry, no run-time `uv sync`."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


@dataclass(frozen=True)
class ProcessId:
    """A PID and its start time (ticks since boot): a reused PID is never signalled."""

    pid: int
    start_time: int


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[-1].split()


def process_id(pid: int) -> ProcessId | None:
    """The identity of a live process, or None when it is gone."""
    fields = _proc_stat(pid)
    return None if fields is None else ProcessId(pid, int(fields[19]))


def _is_running(ident: ProcessId) -> bool:
    """True while the very process `ident` names is alive (not a zombie, not a reused PID)."""
    fields = _proc_stat(ident.pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == ident.start_time


def _all_processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None:
            found.append((int(entry.name), fields))
    return found


def descendants(pid: int) -> list[ProcessId]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for child, fields in _all_processes():
        children.setdefault(int(fields[1]), []).append(child)
    found: list[ProcessId] = []
    frontier = [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found.extend(ident for child in frontier if (ident := process_id(child)) is not None)
    return found


def group_members(pgid: int) -> list[ProcessId]:
    """Every live process in process group `pgid`."""
    return [
        ident
        for pid, fields in _all_processes()
        if int(fields[2]) == pgid and (ident := process_id(pid)) is not None
    ]


def command_line(pid: int) -> list[str]:
    """The argv of a process ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def find_processes(*argv_parts: str) -> list[ProcessId]:
    """Live processes whose argv holds `argv_parts` as consecutive arguments."""
    found = []
    width = len(argv_parts)
    for pid, _ in _all_processes():
        argv = command_line(pid)
        matches = any(tuple(argv[i : i + width]) == argv_parts for i in range(len(argv)))
        if matches and (ident := process_id(pid)) is not None:
            found.append(ident)
    return found


def _signal(ident: ProcessId, sig: signal.Signals) -> None:
    if _is_running(ident):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ident.pid, sig)


@dataclass
class ManagedProcess:
    """One process the harness started (or adopted), with its log file."""

    name: str
    ident: ProcessId
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.ident.pid

    def running(self) -> bool:
        """True while the process runs."""
        if self.popen is not None:
            return self.popen.poll() is None
        return _is_running(self.ident)

    def log(self) -> str:
        """The process's combined stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float) -> None:
        """Block until `pattern` (a regex) appears in the log; fail with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            if regex.search(self.log()):
                return
            if not self.running():
                break
            time.sleep(0.2)
        state = "still running" if self.running() else "exited"
        raise AssertionError(
            f"{self.name} ({state}) did not log {pattern!r} within {timeout}s; log tail:\n"
            + self.log()[-3000:]
        )


@dataclass
class ProcessHarness:
    """Starts processes in new sessions and stops all of them, by PID, on `stop_all`."""

    workdir: Path
    env: dict[str, str]
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        """Start `argv` in its own process group (session), logging to `logs/<name>.log`."""
        log_path = self.log_dir / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env or self.env),
                cwd=self.workdir,
                start_new_session=True,
            )
        ident = process_id(popen.pid) or ProcessId(popen.pid, -1)
        process = ManagedProcess(name, ident, log_path, popen)
        self.processes.append(process)
        return process

    @property
    def log_dir(self) -> Path:
        """Where every process's log goes (one folder, inside the workdir)."""
        return self.workdir / "logs"

    def adopt(self, name: str, ident: ProcessId, log_path: Path) -> ManagedProcess:
        """Take charge of a process started on our behalf (e.g. the SuperLink `flwr run` starts)."""
        process = ManagedProcess(name, ident, log_path)
        self.processes.append(process)
        return process

    def _targets(self) -> set[ProcessId]:
        targets: set[ProcessId] = set()
        for process in self.processes:
            targets.add(process.ident)
            targets.update(descendants(process.pid))
            targets.update(group_members(process.pid))  # a group outlives its leader
        return {ident for ident in targets if ident.start_time >= 0}

    def stop_all(self, grace: float = 10.0) -> None:
        """SIGTERM every process started, its group and its descendants; SIGKILL what is left."""
        targets = self._targets()
        for ident in targets:
            _signal(ident, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_is_running(ident) for ident in targets):
            for process in self.processes:  # reap our children so they do not linger as zombies
                if process.popen is not None:
                    process.popen.poll()
            time.sleep(0.1)
        for ident in targets | self._targets():  # also anything spawned meanwhile
            _signal(ident, signal.SIGKILL)
        for process in self.processes:
            if process.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(timeout=5)

    def leftovers(self) -> list[ProcessId]:
        """Processes of this harness still running (empty after a clean `stop_all`)."""
        return [ident for ident in self._targets() if _is_running(ident)]

    def dump_logs(self, limit: int = 4000) -> str:
        """Tail of every log, for failure messages."""
        return "\n".join(
            f"===== {p.name} (pid {p.pid})\n{p.log()[-limit:]}" for p in self.processes
        )


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a CA and a CA-signed server certificate (127.0.0.1, ::1, localhost) as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flwr-byz test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def make_node_key(path: Path) -> tuple[Path, Path]:
    """An EC P-384 key pair for SuperNode authentication: `path` (OpenSSH private key, what
    `flower-supernode --auth-supernode-private-key` reads) and `path.pub` (OpenSSH public key,
    what `flwr supernode register` reads); the same as `ssh-keygen -t ecdsa -b 384 -N ""`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return path, public


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


RunConfig = Mapping[str, bool | int | float | str]


def toml_value(value: bool | int | float | str) -> str:
    """A value as `flwr run --run-config key=VALUE` accepts it.

    Flower splits the pairs with a regex that knows no escapes, so a string is written as a TOML
    literal string ('...') when it holds no single quote (JSON options such as '{"z": 1.5}'),
    else as a basic string ("...") when it holds no double quote or backslash.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    if not any(char in value for char in '"\\\n'):
        return f'"{value}"'
    raise ValueError(f"cannot pass {value!r} through flwr's --run-config key=value syntax")


def config_args(option: str, config: RunConfig) -> list[str]:
    """`--run-config`/`--federation-config` arguments, one `key=value` per entry."""
    return [arg for key, value in config.items() for arg in (option, f"{key}={toml_value(value)}")]


def _cli_json(text: str) -> dict:
    """The JSON object printed by `flwr ... --format json` (the CLI may print notes before it)."""
    start = text.find("{")
    if start < 0:
        raise AssertionError(f"no JSON in CLI output:\n{text}")
    return json.loads(text[start:])


@dataclass
class FlwrCli:
    """The `flwr` CLI bound to one FLWR_HOME and one SuperLink connection of its config.toml."""

    harness: ProcessHarness
    connection: str

    @property
    def flwr_home(self) -> Path:
        return Path(self.harness.env["FLWR_HOME"])

    def write_connection(self, entries: Mapping[str, str | bool]) -> None:
        """Write `[superlink.<connection>]` (the default) into FLWR_HOME/config.toml."""
        lines = ["[superlink]", f"default = {_toml_string(self.connection)}", ""]
        lines.append(f"[superlink.{self.connection}]")
        for key, value in entries.items():
            text = (
                ("true" if value else "false") if isinstance(value, bool) else _toml_string(value)
            )
            lines.append(f"{key} = {text}")
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `flwr ARGS...` with the harness environment."""
        return subprocess.run(
            ["flwr", *args],
            env=self.harness.env,
            cwd=self.harness.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(
        self, app_dir: Path, run_config: RunConfig, federation_config: RunConfig | None = None
    ) -> int:
        """`flwr run APP CONNECTION --run-config ...`; returns the run id."""
        result = self.flwr(
            "run",
            str(app_dir),
            self.connection,
            *config_args("--run-config", run_config),
            *config_args("--federation-config", federation_config or {}),
            "--format",
            "json",
        )
        payload = _cli_json(result.stdout) if "{" in result.stdout else {}
        if result.returncode != 0 or not payload.get("success") or not payload.get("run-id"):
            raise AssertionError(
                f"flwr run did not start a run (exit {result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.harness.dump_logs()}"
            )
        return int(payload["run-id"])

    def run_status(self, run_id: int) -> str:
        """The run's status from `flwr ls --run-id` (e.g. `running`, `finished:completed`)."""
        result = self.flwr(
            "ls", self.connection, "--run-id", str(run_id), "--format", "json", timeout=60
        )
        if result.returncode != 0:
            raise AssertionError(
                f"flwr ls failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        runs = _cli_json(result.stdout).get("runs", [])
        matching = [run for run in runs if int(run["run-id"]) == run_id]
        if not matching:
            raise AssertionError(f"flwr ls does not list run {run_id}:\n{result.stdout}")
        return str(matching[0]["status"])

    def wait_for_run(self, run_id: int, timeout: float) -> str:
        """Poll `flwr ls` until the run has finished; returns its final status."""
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith(TERMINAL_PREFIX):
                return status
            time.sleep(2.0)
        raise AssertionError(
            f"run {run_id} still {status!r} after {timeout}s\n{self.run_log(run_id)}\n"
            + self.harness.dump_logs()
        )

    def run_log(self, run_id: int) -> str:
        """The ServerApp's log of the run (`flwr log RUN_ID CONNECTION --show`)."""
        result = self.flwr("log", str(run_id), self.connection, "--show", timeout=60)
        return result.stdout + result.stderr


@dataclass
class Federation(FlwrCli):
    """A SuperLink with SuperNodes on loopback (insecure, or TLS with `tls` files)."""

    superlink_port: int = 0
    tls: TlsFiles | None = None
    warm_clientapps: bool = True
    supernodes: list[ManagedProcess] = field(default_factory=list)
    clientapps: list[ManagedProcess] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    def start_superlink(self, enable_supernode_auth: bool = False) -> ManagedProcess:
        """Start `flower-superlink` (Fleet, Control and Runtime HTTP APIs on one port).

        `enable_supernode_auth` (TLS only): only SuperNodes whose public key was registered
        with `flwr supernode register` may connect.
        """
        argv = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.superlink_port)]
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(self.tls.ca_cert)]
            argv += ["--ssl-certfile", str(self.tls.server_cert)]
            argv += ["--ssl-keyfile", str(self.tls.server_key)]
        if enable_supernode_auth:
            argv.append("--enable-supernode-auth")
        argv.append("--disable-runtime-dependency-installation")
        superlink = self.harness.start("superlink", argv)
        superlink.wait_for_log(r"Uvicorn running on", timeout=60)
        entries: dict[str, str | bool] = {"address": self.address}
        if self.tls is None:
            entries["insecure"] = True
        else:
            entries["root-certificates"] = str(self.tls.ca_cert)
        self.write_connection(entries)
        return superlink

    def start_supernode(
        self,
        partition_id: int,
        num_partitions: int,
        auth_private_key: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> ManagedProcess:
        """Start one `flower-supernode` with its partition in `--node-config`.

        `auth_private_key`: the node's OpenSSH EC private key, for SuperNode authentication.
        With `warm_clientapps` (the default) the SuperNode runs with `--isolation process` and
        one long-lived `python -m flwr_byz.clients.warm_superexec` (in `clientapps`) runs its
        messages;
        otherwise the SuperNode starts a fresh `flwr-clientapp` process per message.
        """
        if self.tls is None:
            trust = ["--insecure"]
        else:
            trust = ["--root-certificates", str(self.tls.ca_cert)]
        node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
        runtime_port = free_port()
        argv = ["flower-supernode", *trust, "--superlink", self.address]
        argv += ["--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", node_config]
        if auth_private_key is not None:
            argv += ["--auth-supernode-private-key", str(auth_private_key)]
        if self.warm_clientapps:
            argv += ["--isolation", "process"]
        argv += list(extra_args)
        # Each SuperNode has its own FLWR_HOME, as on separate machines (apps are installed there).
        home = self.harness.workdir / f"home-node-{partition_id}"
        env = dict(self.harness.env, FLWR_HOME=str(home))
        node = self.harness.start(f"supernode-{partition_id}", argv, env=env)
        self.supernodes.append(node)
        if self.warm_clientapps:
            self.clientapps.append(
                self.harness.start(
                    f"clientapp-{partition_id}",
                    warm_superexec_argv(f"127.0.0.1:{runtime_port}", node.pid),
                    env=env,
                )
            )
        return node

    def wait_for_supernodes(self, timeout: float = 90) -> None:
        """Block until every SuperNode has registered with the SuperLink."""
        for node in self.supernodes:
            node.wait_for_log(r"SuperNode ID: \d+", timeout=timeout)
        for clientapp in self.clientapps:
            clientapp.wait_for_log(r"warm SuperExec polling", timeout=timeout)


def warm_superexec_argv(runtime_api_address: str, supernode_pid: int) -> list[str]:
    """The long-lived ClientApp executor of one SuperNode (`--isolation process`); it exits
    when the SuperNode's PID is gone. The SuperNode's Runtime API is plain HTTP on loopback
    (no `--ssl-certfile`), also when the SuperLink connection uses TLS."""
    return [
        sys.executable,
        "-m",
        "flwr_byz.clients.warm_superexec",
        "--runtime-api-address",
        runtime_api_address,
        "--insecure",
        "--parent-pid",
        str(supernode_pid),
    ]


@dataclass
class LocalSimulation(FlwrCli):
    """Flower's local simulation connection (`address = ":local:"`) on free ports.

    `flwr run` starts a detached `flower-superlink --simulation` on first use and leaves it running;
    `run` adopts it into the harness so that it is stopped with everything else.
    """

    http_port: int = 0
    control_port: int = 0

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        self.control_port = self.control_port or free_port()
        self.harness.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(self.http_port)
        self.harness.env["FLWR_LOCAL_CONTROL_API_PORT"] = str(self.control_port)
        self.write_connection({"address": ":local:"})

    def run(
        self, app_dir: Path, run_config: RunConfig, federation_config: RunConfig | None = None
    ) -> int:
        """`flwr run` on the local simulation; adopts the SuperLink it starts."""
        try:
            return super().run(app_dir, run_config, federation_config)
        finally:
            self._adopt_local_superlink()

    def _adopt_local_superlink(self) -> None:
        known = {process.ident for process in self.harness.processes}
        log_path = self.flwr_home / "local-superlink" / "superlink.log"
        for ident in find_processes("--port", str(self.http_port)):
            is_superlink = any(arg.endswith("flower-superlink") for arg in command_line(ident.pid))
            if is_superlink and ident not in known:
                self.harness.adopt("local-superlink", ident, log_path)


def copy_app(source: Path, destination: Path, packages: tuple[str, ...]) -> Path:
    """Copy a Flower app (pyproject.toml, packages) to `destination`, where `flwr run` may write."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "pyproject.toml", destination / "pyproject.toml")
    for package in packages:
        shutil.copytree(
            source / package,
            destination / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    return destination
