"""Run-config keys of the authors' protocol: eval-every (max and final accuracy in result.json),
init (Xavier first layer), partitioning shards (disjoint, cycled), n - f honest baselines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from flwr_byz import data, models
from flwr_byz.schema import RunConfig, from_mapping
from flwr_byz.simulations import engines
from flwr_byz.simulations.server_app import run_summary


def tiny(tmp_path: Path, **changes) -> RunConfig:
    base = {
        "num_clients": 4,
        "rule": "average",
        "batch_size": 16,
        "learning_rate": 0.2,
        "num_rounds": 5,
        "seed": 1,
        "results_dir": str(tmp_path),
        "run_name": "exp/run",
    }
    base.update(changes)
    return RunConfig(**base)


def test_eval_every_evaluates_every_kth_and_last_round(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, eval_every=2)
    record = engines.run_inprocess(cfg)
    evaluated = [r["round"] for r in record.rounds if "test-accuracy" in r]
    assert evaluated == [0, 2, 4, 5]  # the initial model, every 2nd round and the final one
    result = json.loads((cfg.run_dir / "result.json").read_text())
    accuracies = [
        r["test-accuracy"] for r in record.rounds if r["round"] >= 1 and "test-accuracy" in r
    ]
    assert result["max-test-accuracy"] == max(accuracies)
    assert result["final-test-accuracy"] == accuracies[-1]


def test_run_summary_max_and_final_by_hand() -> None:
    cfg = RunConfig(num_clients=4)
    rounds = [
        {"round": 0, "test-accuracy": 0.99},  # the initial model does not count
        {"round": 1},
        {"round": 2, "test-accuracy": 0.5},
        {"round": 3, "test-accuracy": 0.75},
        {"round": 4, "test-accuracy": 0.625},
    ]
    summary = run_summary(cfg, rounds)
    assert summary["max-test-accuracy"] == 0.75 and summary["final-test-accuracy"] == 0.625


def test_eval_every_and_init_are_validated_and_keep_old_identities() -> None:
    with pytest.raises(ValueError, match="eval-every must be >= 1"):
        RunConfig(eval_every=0)
    with pytest.raises(ValueError, match="init must be one of"):
        RunConfig(init="he")
    cfg = from_mapping({"eval-every": "10", "init": "xavier", "partitioning": "shards"})
    assert (cfg.eval_every, cfg.init, cfg.partitioning) == (10, "xavier", "shards")
    back = RunConfig.from_flower(cfg.to_flower())
    assert (back.eval_every, back.init, back.partitioning) == (10, "xavier", "shards")
    # a default init and eval-every leave the identity as before the keys existed
    assert "init" not in RunConfig().identity() and "eval_every" not in RunConfig().identity()
    assert cfg.identity()["init"] == "xavier" and "eval_every" not in cfg.identity()


def test_xavier_first_layer() -> None:
    plain = models.build("mlp", seed=4)
    xavier = models.build("mlp", seed=4, init="xavier")
    first = xavier[1].weight
    bound = math.sqrt(
        6 / (784 + 100)
    )  # xavier_uniform_: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    assert first.abs().max() <= bound and first.abs().max() > 0.9 * bound
    assert plain[1].weight.abs().max() <= 1 / math.sqrt(784)  # PyTorch's default: 1/sqrt(fan_in)
    assert torch.equal(plain[1].bias, xavier[1].bias) and torch.equal(
        plain[3].weight, xavier[3].weight
    )
    assert torch.equal(xavier[1].weight, models.build("mlp", seed=4, init="xavier")[1].weight)
    with pytest.raises(ValueError, match="MLPs only"):
        models.build("cifar_cnn", init="xavier")


def test_shards_are_disjoint_and_cycled() -> None:
    parts = data.partition(torch.zeros(10, dtype=torch.int64), 3, scheme="shards", seed=0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    assert [p.tolist() for p in parts] == [order[r::3].tolist() for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    shard = torch.tensor([7, 3, 9, 1])
    assert data.cycle_batch(shard, 3, 1).tolist() == [7, 3, 9]
    assert data.cycle_batch(shard, 3, 2).tolist() == [1, 7, 3]  # wraps around
    assert data.cycle_batch(shard, 3, 3).tolist() == [9, 1, 7]
    with pytest.raises(ValueError, match="batch_size"):
        data.cycle_batch(shard, 5, 1)


def test_shards_run_end_to_end(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, partitioning="shards", init="xavier", num_rounds=2)
    record = engines.run_inprocess(cfg)
    assert record.status == "finished" and len(record.rounds) == 3


def test_baseline_on_n_minus_f_honest_workers_needs_no_new_option(tmp_path: Path) -> None:
    # n = 6, f = 1: the baseline is 5 honest workers, the rule still told f = 1
    cfg = tiny(tmp_path, num_clients=5, num_byzantine=1, attack="none", rule="krum", num_rounds=1)
    assert cfg.byzantine_partition_ids == []
    record = engines.run_inprocess(cfg)
    assert (
        record.rounds[-1]["replies"] == 5 and record.rounds[-1].get("byzantine-influence", 0) == 0
    )


def test_honest_client_cycles_through_its_shard() -> None:
    from flwr_byz.clients.honest import minibatch
    from flwr_byz.clients.runtime import dataset_for, shard_indices
    from flwr_byz.schema import ClientConfig

    run = {"partitioning": "shards", "batch-size": 7, "seed": 2}
    cfg = ClientConfig.from_configs(run, {"partition-id": 1, "num-partitions": 3})
    split, shard = dataset_for(cfg), shard_indices(cfg)
    expected = data.shards(split.train_y.numel(), 3, seed=2)[1]
    assert torch.equal(shard, expected)
    for rnd in (1, 2, 3):
        images, labels = minibatch(cfg, rnd)
        picks = shard[(rnd - 1) * 7 : rnd * 7]
        assert torch.equal(labels, split.train_y[picks]) and torch.equal(
            images, split.train_x[picks]
        )


def test_backdoor_accuracy_is_measured_centrally_under_the_backdoor_attack(tmp_path: Path) -> None:
    """ALIE Table 2: the global model's backdoor accuracy at every evaluation, max and final."""
    from flwr_byz import attacks
    from flwr_byz.clients.malicious import backdoor_accuracy
    from flwr_byz.simulations.server_app import make_evaluator

    cfg = tiny(tmp_path, attack="alie_backdoor", num_byzantine=1)
    evaluate, initial = make_evaluator(cfg)
    values = evaluate(initial)
    split = data.load_dataset(cfg.dataset, seed=cfg.seed, test_fraction=cfg.test_fraction)
    model = models.build(
        cfg.model, num_classes=split.num_classes, in_shape=tuple(split.train_x.shape[1:]), seed=1
    )
    model.load_state_dict(initial.to_torch_state_dict())
    expected = backdoor_accuracy(
        model, split.test_x, split.test_y, data.max_intensity(cfg.dataset), attacks.BACKDOOR_TARGET
    )
    assert values["backdoor-accuracy"] == expected
    assert "backdoor-accuracy" not in make_evaluator(tiny(tmp_path))[0](initial)
    rounds = [
        {"round": 1, "test-accuracy": 0.5, "backdoor-accuracy": 0.25},
        {"round": 2, "test-accuracy": 0.6, "backdoor-accuracy": 0.125},
    ]
    summary = run_summary(cfg, rounds)
    assert summary["max-backdoor-accuracy"] == 0.25
    assert summary["final-backdoor-accuracy"] == 0.125
