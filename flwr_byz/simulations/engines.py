"""Two ways to run one run: Flower's simulation engine (Ray) or in process (no Ray).

Both call the same ServerApp (``flwr_byz.simulations.server_app:app``) and the same
ClientApp (``flwr_byz.clients.app:app``) with the same flat run config, so for one seed they
compute the
same numbers (up to float summation order). ``flower`` uses ``flwr.simulation.run_simulation``
with ``num_supernodes = n`` and one CPU per ClientApp; since that function takes no run
config, the config reaches both apps through thin wrappers that set ``context.run_config``.
``inprocess`` uses ``flwr_byz.inprocess.InProcessGrid``: the ClientApp is called directly,
sequentially, in this process.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from flwr_byz.schema import RunConfig
from flwr_byz.simulations import server_app
from flwr_byz.simulations.results import RunRecord, RunStore

ENGINES = ("inprocess", "flower")


def client_app() -> ClientApp:
    """The project's ClientApp (``flwr_byz.clients.app:app``)."""
    from flwr_byz.clients.app import app

    return app


def node_configs(cfg: RunConfig) -> list[dict[str, int]]:
    """Node configs of the n SuperNodes, as Flower's simulation sets them."""
    return [{"partition-id": i, "num-partitions": cfg.num_clients} for i in range(cfg.num_clients)]


def run_inprocess(cfg: RunConfig, threads: int | None = 1) -> RunRecord:
    """Run ``cfg`` with the ServerApp logic and the ClientApp in this process (no Ray)."""
    from flwr_byz.inprocess import InProcessGrid

    if threads:
        torch.set_num_threads(threads)
    grid = InProcessGrid(client_app(), node_configs(cfg), cfg.to_flower())
    server_app.app(grid, server_context(cfg))
    return finished_record(cfg)


def server_context(cfg: RunConfig) -> Context:
    """The ServerApp's Context, carrying ``cfg`` as its run config."""
    return Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg.to_flower()
    )


def finished_record(cfg: RunConfig) -> RunRecord:
    """The record the ServerApp wrote for ``cfg``; an error if the run did not finish."""
    record = RunStore(cfg.run_dir).load_record()
    if record is None or record.status != "finished":
        raise RuntimeError(f"{cfg.run_name}: the ServerApp ended without finishing the run")
    return record


class RunConfigClientApp(ClientApp):
    """A ClientApp that gives the inner app our run config (and sets torch's thread count).

    ``run_simulation`` takes no run config; this carries it to every SuperNode (and pickles
    to Ray's actors: the inner app is looked up by import in each process).
    """

    def __init__(self, run_config: dict[str, Any], threads: int | None = 1) -> None:
        super().__init__()
        self.run_config = dict(run_config)
        self.threads = threads

    def __call__(self, message: Message, context: Context) -> Message:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        # Flower refuses a changed context.run_config: give the app a view with ours.
        view = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=context.state,
            run_config=dict(self.run_config),
        )
        reply = client_app()(message, view)
        context.state = view.state
        return reply


def server_app_for(cfg: RunConfig) -> ServerApp:
    """A ServerApp that runs ``flwr_byz.simulations.server_app:app`` with ``cfg`` as its run
    config."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        context.run_config = cfg.to_flower()
        server_app.app(grid, context)

    return server


def run_flower(
    cfg: RunConfig, threads: int | None = 1, num_cpus: int | None = None, verbose: bool = False
) -> RunRecord:
    """Run ``cfg`` on Flower's simulation engine (Ray), one CPU per ClientApp."""
    from flwr.simulation import run_simulation

    if threads:
        torch.set_num_threads(threads)
    server = server_app_for(cfg)
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": num_cpus or os.cpu_count() or 1,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=server,
            client_app=RunConfigClientApp(cfg.to_flower(), threads),
            num_supernodes=cfg.num_clients,
            backend_config=backend_config,  # type: ignore[arg-type]
            verbose_logging=verbose,
        )
    return finished_record(cfg)


def with_client_state(cfg: RunConfig) -> RunConfig:
    """Give worker-momentum runs a ``client-state-dir`` inside the run directory (when unset),
    so that the clients' ``G_{t-1}`` survives an interruption and a resume stays exact."""
    worker_momentum = (
        cfg.momentum > 0 and cfg.momentum_place == "worker" and cfg.update_mode == "gradient"
    )
    if worker_momentum and not cfg.client_state_dir:
        return cfg.replace(client_state_dir=str(cfg.run_dir / "client-state"))
    return cfg


def run(
    cfg: RunConfig, engine: str = "inprocess", threads: int | None = 1, verbose: bool = False
) -> RunRecord:
    """Run ``cfg`` on ``engine`` (``"inprocess"`` or ``"flower"``)."""
    cfg = with_client_state(cfg)
    if engine == "inprocess":
        return run_inprocess(cfg, threads=threads)
    if engine == "flower":
        return run_flower(cfg, threads=threads, verbose=verbose)
    raise ValueError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
