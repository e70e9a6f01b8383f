"""Device handling: "auto" picks CUDA when present; CUDA and CPU give the same aggregate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_fakes import from_record, initial_arrays, make_client_app, node_configs, to_record

import flwr_byz.strategy as strategies
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import resolve_device

ROLES = ["honest"] * 9 + ["huge", "nan"]
SAMPLING = {"fraction_evaluate": 0.0, "min_train_nodes": 11, "min_available_nodes": 11}


def test_auto_device_follows_cuda_availability() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert strategies.Median(device="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            strategies.Median(device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(strategies.STRATEGIES))
def test_cuda_and_cpu_strategies_agree(name: str) -> None:
    results = {}
    for device in ("cpu", "cuda"):
        strategy = strategies.STRATEGIES[name](
            num_byzantine=2,
            device=device,
            update_mode="gradient",
            learning_rate=0.1,
            server_momentum=0.9,
            honest_node_ids=range(1, 10),
            **SAMPLING,
        )
        grid = InProcessGrid(make_client_app("gradient"), node_configs(ROLES))
        result = strategy.start(grid, to_record(initial_arrays()), num_rounds=2)
        results[device] = (from_record(result.arrays), result.train_metrics_clientapp[2])
    (cpu_arrays, cpu_metrics), (gpu_arrays, gpu_metrics) = results["cpu"], results["cuda"]
    for key, value in cpu_arrays.items():
        assert gpu_arrays[key].dtype == value.dtype
        np.testing.assert_allclose(gpu_arrays[key], value, rtol=1e-4, atol=1e-5)
    assert gpu_metrics["byz.excluded"] == cpu_metrics["byz.excluded"] == 1
    assert gpu_metrics.get("byz.selected-nodes") == cpu_metrics.get("byz.selected-nodes")
