"""The deployment harness itself (fast, no Flower processes): cleanup, quoting, certificates."""

from __future__ import annotations

import ipaddress
import socket
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.config import parse_config_args
from hypothesis import given
from hypothesis import strategies as st

from .harness import (
    ProcessHarness,
    config_args,
    descendants,
    flower_env,
    free_port,
    make_tls_files,
    process_id,
    toml_value,
    warm_superexec_argv,
)

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="the harness reads /proc")

# A parent that starts a grandchild in a new session (as Flower's SuperExec is started), then
# ignores SIGTERM, so that only SIGKILL ends it; both sleep long.
_TREE = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=True)
print(child.pid, flush=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(300)
"""


def _running(pid: int) -> bool:
    ident = process_id(pid)
    if ident is None:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def test_stop_all_ends_the_whole_tree_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    harness = ProcessHarness(workdir=tmp_path, env=flower_env(tmp_path / "home"))
    parent = harness.start("tree", [sys.executable, "-c", _TREE])
    deadline = time.monotonic() + 30
    while not parent.log().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(parent.log().split()[0])
    assert grandchild in [ident.pid for ident in descendants(parent.pid)]
    assert _running(parent.pid) and _running(grandchild)

    harness.stop_all(grace=1.0)

    assert not _running(parent.pid)
    assert not _running(grandchild)
    assert harness.leftovers() == []
    assert parent.popen is not None and parent.popen.returncode is not None


def test_stop_all_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    harness = ProcessHarness(workdir=tmp_path, env=flower_env(tmp_path / "home"))
    harness.start("short", [sys.executable, "-c", "pass"]).popen.wait(timeout=30)
    bystander = harness.start("bystander", [sys.executable, "-c", "import time; time.sleep(60)"])
    harness.processes.remove(bystander)  # not ours any more, as far as stop_all knows
    try:
        harness.stop_all(grace=0.5)
        assert bystander.popen.poll() is None
    finally:
        bystander.popen.kill()
        bystander.popen.wait(timeout=10)


@given(
    st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**62), max_value=2**62),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(
            alphabet=st.characters(
                blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                blacklist_characters="'",
            ),
            max_size=30,
        ),
        st.text(alphabet=st.sampled_from('ab{}:,."1 '), max_size=30).filter(lambda s: "'" not in s),
    )
)
def test_toml_value_survives_flowers_run_config_parser(value: bool | int | float | str) -> None:
    """What `flwr run --run-config key=VALUE` makes of our quoting is the value itself."""
    [option, pair] = config_args("--run-config", {"some-key": value})
    assert option == "--run-config"
    parsed = parse_config_args([pair])
    assert parsed == {"some-key": value}
    assert type(parsed["some-key"]) is type(value)


def test_toml_value_refuses_what_flower_cannot_parse() -> None:
    with pytest.raises(ValueError, match="cannot pass"):
        toml_value("both ' and \" quotes")


def test_tls_files_chain_to_the_ca_and_name_loopback(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises when the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port


def test_warm_superexec_drops_the_previous_fabs_modules(tmp_path: Path, monkeypatch) -> None:
    """A task of another FAB re-imports the app: the old FAB's modules and path entry go."""
    import types

    from flwr_byz.clients.warm_superexec import LoadedApps

    old_dir, new_dir = tmp_path / "fab-old", tmp_path / "fab-new"
    old_module = types.ModuleType("fab_app_under_test")
    old_module.__file__ = str(old_dir / "fab_app_under_test" / "__init__.py")
    monkeypatch.setitem(sys.modules, "fab_app_under_test", old_module)
    monkeypatch.setattr(sys, "path", [str(old_dir), *sys.path])
    loaded = LoadedApps()
    loaded.switch_to("hash-old", old_dir)
    loaded.switch_to("hash-old", old_dir)  # the same FAB: nothing dropped
    assert sys.modules["fab_app_under_test"] is old_module
    loaded.switch_to("hash-new", new_dir)
    assert "fab_app_under_test" not in sys.modules
    assert str(old_dir) not in sys.path
    assert (loaded.fab_hash, loaded.app_dir) == ("hash-new", new_dir)
    assert "pytest" in sys.modules  # modules from elsewhere stay


def test_warm_superexec_argv_names_the_supernode() -> None:
    argv = warm_superexec_argv("127.0.0.1:9100", 1234)
    assert argv[:3] == [sys.executable, "-m", "flwr_byz.clients.warm_superexec"]
    assert argv[argv.index("--runtime-api-address") + 1] == "127.0.0.1:9100"
    assert argv[argv.index("--parent-pid") + 1] == "1234"
    assert "--insecure" in argv


def test_warm_superexec_exits_when_its_supernode_is_gone(tmp_path: Path) -> None:
    """`--parent-pid`: the executor stops (exit 0) once that PID is gone, even while it retries
    a Runtime API that does not answer."""
    harness = ProcessHarness(workdir=tmp_path, env=flower_env(tmp_path / "home"))
    try:
        stand_in = harness.start("supernode", [sys.executable, "-c", "import time; time.sleep(60)"])
        executor = harness.start(
            "clientapp", warm_superexec_argv(f"127.0.0.1:{free_port()}", stand_in.pid)
        )
        executor.wait_for_log(r"warm SuperExec polling", timeout=60)
        assert stand_in.popen is not None and executor.popen is not None
        stand_in.popen.kill()
        stand_in.popen.wait(timeout=10)
        assert executor.popen.wait(timeout=30) == 0, executor.log()
        assert "warm SuperExec stopped" in executor.log()
    finally:
        harness.stop_all(grace=1.0)
    assert harness.leftovers() == []


def test_warm_superexec_forgets_the_project_packages(monkeypatch) -> None:
    """Before its first task the executor drops the project's modules it imported itself, so
    that the FAB's copy of `flwr_byz` (with its clients and simulations) is the one that runs."""
    import types

    from flwr_byz.clients.warm_superexec import forget_project_modules

    module = types.ModuleType("stand_in")
    names = ["flwr_byz", "flwr_byz.clients.app", "flwr_byz.gars", "flwr", "flwr_byzx", "clients"]
    fake = dict.fromkeys([*names, "flwr_byz.clients.warm_superexec"], module)
    monkeypatch.setattr(sys, "modules", fake)
    dropped = forget_project_modules()
    assert sorted(dropped) == ["flwr_byz", "flwr_byz.clients.app", "flwr_byz.gars"]
    assert sorted(fake) == ["clients", "flwr", "flwr_byz.clients.warm_superexec", "flwr_byzx"]
