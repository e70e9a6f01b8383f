"""The rules beyond the seeds through the run config: ``pre`` chains, FLTrust's root data set
and server update, centered clipping's state across a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flwr_byz import data, models
from flwr_byz.schema import RunConfig, from_mapping
from flwr_byz.simulations import engines
from flwr_byz.simulations.fltrust_root import ROOT_KEY, make_root_update, root_indices
from flwr_byz.simulations.server_app import build_strategy


def tiny(tmp_path: Path, **changes) -> RunConfig:
    base = {
        "num_clients": 5,
        "num_byzantine": 1,
        "rule": "median",
        "batch_size": 16,
        "learning_rate": 0.2,
        "num_rounds": 4,
        "seed": 3,
        "device": "cpu",
        "results_dir": str(tmp_path),
        "run_name": "exp/run",
    }
    base.update(changes)
    return RunConfig(**base)


def test_pre_chain_from_names_or_json_reaches_the_strategy(tmp_path: Path) -> None:
    named = build_strategy(tiny(tmp_path, pre="nnm,bucketing"))
    assert named.aggregator.pre == [("nnm", {}), ("bucketing", {})]
    steps = '[{"name": "bucketing", "s": 2}, "nnm"]'
    chained = build_strategy(tiny(tmp_path, pre=steps))
    assert chained.aggregator.pre == [("bucketing", {"s": 2}), ("nnm", {})]
    assert tiny(tmp_path, pre="nnm").identity() != tiny(tmp_path).identity()
    assert "pre" not in tiny(tmp_path).identity()  # runs without a chain keep their identity
    with pytest.raises(ValueError, match="pre: unknown pre-aggregator 'nmm'"):
        from_mapping({"num-clients": 5, "pre": "nmm"})


def test_root_indices_are_distinct_seeded_and_bounded() -> None:
    a, b = root_indices(1000, 100, 1), root_indices(1000, 100, 1)
    assert torch.equal(a, b) and a.unique().numel() == 100 and int(a.max()) < 1000
    assert not torch.equal(a, root_indices(1000, 100, 2))
    with pytest.raises(ValueError, match="root-size must be in"):
        root_indices(50, 100, 1)


def test_fltrust_server_update_is_the_root_minibatch_gradient(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, rule="fltrust", num_byzantine=0, root_size=40)
    update = make_root_update(cfg)
    split = data.load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
    net = models.build(cfg.model, num_classes=split.num_classes, seed=7).double()
    arrays = {k: v.detach().float().numpy() for k, v in net.state_dict().items()}
    got = update(arrays, 5)
    # reference: the same batch of the same root set, float64 autograd on a fresh copy
    root = root_indices(int(split.train_y.numel()), 40, cfg.seed)
    picks = data.sample_batch(root, 16, cfg.seed, ROOT_KEY, 5)
    ref = models.build(cfg.model, num_classes=split.num_classes, seed=0).double()
    ref.load_state_dict({k: torch.from_numpy(v).double() for k, v in arrays.items()})
    loss = torch.nn.functional.nll_loss(ref(split.train_x[picks].double()), split.train_y[picks])
    loss.backward()
    for name, param in ref.named_parameters():
        np.testing.assert_allclose(got[name], param.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert set(got) == set(arrays)


def test_fltrust_runs_from_the_run_config(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, rule="fltrust", num_byzantine=1, attack="sign_flip", root_size=30)
    record = engines.run_inprocess(cfg)
    assert record.status == "finished"
    accuracies = [r["test-accuracy"] for r in record.rounds if "test-accuracy" in r]
    assert len(set(accuracies)) > 1  # the model moved


def test_centered_clipping_resumes_exactly(tmp_path: Path) -> None:
    """The center (the previous round's output) is checkpointed: 2 + 2 rounds = 4 rounds."""
    changes = {"rule": "centered_clipping", "rule_options": {"tau": 0.5}, "num_rounds": 4}
    whole = engines.run_inprocess(tiny(tmp_path / "whole", **changes))
    first = tiny(tmp_path / "split", **{**changes, "num_rounds": 2})
    engines.run_inprocess(first)
    resumed = engines.run_inprocess(first.replace(num_rounds=4))
    assert resumed.completed_rounds == 4
    done = [r["test-accuracy"] for r in whole.rounds]
    again = [r["test-accuracy"] for r in resumed.rounds]
    assert done == again
