"""Fixtures of the deployment tests; the process harness itself is in `harness.py`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import (
    Federation,
    LocalSimulation,
    ProcessHarness,
    flower_env,
    free_port,
    make_tls_files,
    require_flower_binaries,
)


@pytest.fixture
def process_harness(tmp_path: Path) -> Iterator[ProcessHarness]:
    """A ProcessHarness in a tmp dir; all it started is stopped at teardown, pass or fail."""
    flwr_home = tmp_path / "flwr_home"
    flwr_home.mkdir()
    harness = ProcessHarness(workdir=tmp_path, env=flower_env(flwr_home))
    try:
        yield harness
    finally:
        harness.stop_all()
    leftovers = harness.leftovers()
    assert not leftovers, f"processes survived the teardown: {leftovers}"


@pytest.fixture
def federation_factory(
    process_harness: ProcessHarness, tmp_path: Path
) -> Callable[..., Federation]:
    """Build a `Federation` on free loopback ports: insecure, or TLS with throw-away certs."""

    def make(tls: bool = False) -> Federation:
        require_flower_binaries()
        return Federation(
            harness=process_harness,
            connection="loopback-tls" if tls else "loopback",
            superlink_port=free_port(),
            tls=make_tls_files(tmp_path / "certs") if tls else None,
        )

    return make


@pytest.fixture
def local_simulation(process_harness: ProcessHarness) -> LocalSimulation:
    """Flower's `:local:` simulation connection on free ports (its SuperLink is stopped after)."""
    require_flower_binaries()
    return LocalSimulation(harness=process_harness, connection="local")
