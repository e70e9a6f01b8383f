"""The two engines compute the same run: Flower's simulation engine (Ray) and in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from flwr_byz.schema import RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.results import RunStore


@pytest.mark.slow  # Ray's start-up: ~25 s on an idle 2-core machine
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_flower_and_inprocess_engines_agree(tmp_path: Path) -> None:
    """One short run (n=4, 2 rounds, an omniscient attack through the coordinator) on both."""
    common = {
        "num_clients": 4,
        "num_byzantine": 1,
        "rule": "median",
        "attack": "alie",
        "attack_options": {"z": 1.5},
        "batch_size": 16,
        "learning_rate": 0.3,
        "num_rounds": 2,
        "seed": 5,
        "run_name": "engines/run",
    }
    inproc = engines.run(RunConfig(results_dir=str(tmp_path / "a"), **common), "inprocess")
    flower = engines.run(RunConfig(results_dir=str(tmp_path / "b"), **common), "flower")
    assert inproc.completed_rounds == flower.completed_rounds == 2
    for a, b in zip(inproc.rounds, flower.rounds, strict=True):
        assert a["test-accuracy"] == pytest.approx(b["test-accuracy"], abs=1e-3)
        assert a["test-loss"] == pytest.approx(b["test-loss"], rel=1e-5)
    for a, b in zip(inproc.rounds[1:], flower.rounds[1:], strict=True):
        assert a["replies"] == b["replies"] == 4
        assert a["variance-norm-ratio"] == pytest.approx(b["variance-norm-ratio"], rel=1e-5)
    arrays_a = RunStore(tmp_path / "a" / "engines/run").load_checkpoint().arrays
    arrays_b = RunStore(tmp_path / "b" / "engines/run").load_checkpoint().arrays
    for key, value in arrays_a.items():
        torch.testing.assert_close(value, arrays_b[key], rtol=1e-5, atol=1e-6)


def test_unknown_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="engine 'ray'.*inprocess, flower"):
        engines.run(RunConfig(results_dir=str(tmp_path)), "ray")


def test_client_app_wrapper_keeps_flower_context_unchanged() -> None:
    """Flower refuses a ClientApp that changes context.run_config: the wrapper must not."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

    from flwr_byz.inprocess import InProcessGrid

    cfg = RunConfig(num_clients=2, rule="average")
    wrapper = engines.RunConfigClientApp(cfg.to_flower(), threads=None)
    grid = InProcessGrid(wrapper, engines.node_configs(cfg), run_config={"other": 1})
    context: Context = grid.contexts[1]
    message = Message(RecordDict({"config": ConfigRecord({"ask": "role"})}), 1, MessageType.QUERY)
    reply = wrapper(message, context)
    assert dict(context.run_config) == {"other": 1}
    assert reply.content.config_records["role"]["partition-id"] == 0


def test_node_count_mismatch_is_a_clear_error() -> None:
    from flwr_byz.inprocess import InProcessGrid
    from flwr_byz.simulations.server_app import wait_for_nodes

    grid = InProcessGrid(engines.client_app(), [{}] * 3, run_config={})
    wait_for_nodes(grid, 3, timeout=0.0)
    with pytest.raises(ValueError, match="num-clients=4 but 3 nodes"):
        wait_for_nodes(grid, 4, timeout=0.05, poll=0.01)
    with pytest.raises(ValueError, match="num-clients=2 but 3 nodes"):
        wait_for_nodes(grid, 2, timeout=10.0)
