"""The built distributions: one import name (``flwr_byz``), the configs inside, a wheel that runs
alone.

The wheel and sdist are built with ``python -m build --no-isolation`` from a copy of the files a
build reads (so the work tree gets no ``*.egg-info`` or ``build/``); the wheel is installed without
dependencies into a venv that borrows the test environment's packages, and the quickstart runs from
a folder outside the repository, so nothing can come from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "flwr_byz")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the wheel and the sdist once for this module."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


def test_wheel_installs_one_import_name_with_the_configs(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"flwr_byz"}
    for needed in (
        "flwr_byz/clients/app.py",
        "flwr_byz/simulations/server_app.py",
        "flwr_byz/simulations/configs/quickstart.yaml",
        "flwr_byz/simulations/configs/paper_momentum_mnist.yaml",
    ):
        assert needed in names
    assert "flwr-byz = flwr_byz.simulations.cli:main" in scripts


def test_sdist_holds_the_package_and_no_generic_top_level_names(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    assert "pyproject.toml" in names
    assert "flwr_byz/clients/app.py" in names
    assert "flwr_byz/simulations/configs/quickstart.yaml" in names
    assert not any(name.startswith(("clients/", "simulations/")) for name in names)


def test_installed_wheel_runs_the_quickstart_outside_the_repository(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    done = subprocess.run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "-q",
            str(dists["wheel"]),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import flwr_byz.clients.app as m; print(m.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
    run = subprocess.run(
        [
            str(env_dir / "bin" / "flwr-byz"),
            *("run", "quickstart", "--quick", "--rounds", "2", "--no-plot", "--no-progress"),
            *("--results", str(work / "out")),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert list((work / "out").rglob("summary.csv")), run.stdout[-2000:]
