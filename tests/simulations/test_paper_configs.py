"""The paper-scale experiment files (``simulations/configs/paper_*.yaml``) load, expand to the
expected sweeps (number of runs, seeds per case) and carry the papers' protocol fields; their
rule and attack options are accepted by the rules and the malicious clients. No training."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict

import pytest
import torch

from flwr_byz import gars
from flwr_byz.clients.malicious import MALICIOUS_CLIENTS
from flwr_byz.schema import RunConfig
from flwr_byz.simulations.experiment import CONFIG_DIR, load_experiment

# name -> (runs, seeds of every case, rounds)
EXPECTED = {
    "paper_alie_table1": (36, (1, 2, 3), 300),
    "paper_alie_table2": (21, (1, 2, 3), 300),
    "paper_momentum_mnist": (240, (1, 2, 3, 4, 5), 300),
    "paper_momentum_bulyan_code": (40, (1, 2, 3, 4, 5), 300),
    "paper_phocas": (250, tuple(range(1, 11)), 500),
    "paper_bulyan_lp": (42, (1, 2, 3), 500),
}
PAPER_FILES = sorted(p.stem for p in CONFIG_DIR.glob("paper_*.yaml"))


def _runs(name: str) -> tuple[RunConfig, ...]:
    return load_experiment(name).runs


def _case_key(cfg: RunConfig) -> str:
    d = dataclasses.asdict(cfg)
    for key in ("seed", "run_name"):
        d.pop(key)
    return json.dumps(d, sort_keys=True, default=str)


def test_every_paper_file_is_expected() -> None:
    assert sorted(EXPECTED) == PAPER_FILES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_runs_seeds_and_common_fields(name: str) -> None:
    count, seeds, rounds = EXPECTED[name]
    runs = _runs(name)
    assert len(runs) == count
    assert len({r.run_name for r in runs}) == count
    cases: dict[str, list[int]] = defaultdict(list)
    for cfg in runs:
        cases[_case_key(cfg)].append(cfg.seed)
    assert all(tuple(sorted(s)) == seeds for s in cases.values())
    assert len(cases) * len(seeds) == count
    for cfg in runs:
        assert cfg.dataset == "mnist"
        assert cfg.data_root  # a folder, overridable with --set data-root=...
        assert cfg.num_rounds == rounds
        assert cfg.eval_every == 5
        assert cfg.update_mode == "gradient"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_options_are_accepted(name: str) -> None:
    """Each run's rule takes its options at its (n, f), and its attack takes its options."""
    checked: set[str] = set()
    for cfg in _runs(name):
        key = json.dumps([cfg.rule, cfg.rule_options, cfg.num_clients, cfg.num_byzantine])
        if key not in checked:
            checked.add(key)
            vectors = torch.randn(cfg.num_clients, 8, generator=torch.Generator().manual_seed(0))
            out = gars.get(cfg.rule).aggregate(vectors, cfg.num_byzantine, **cfg.rule_options)
            assert torch.isfinite(out.vector).all()
        if cfg.attack != "none":
            allowed = MALICIOUS_CLIENTS[cfg.attack].allowed_options
            assert set(cfg.attack_options) <= allowed


def _alie_protocol(cfg: RunConfig) -> None:
    assert (cfg.num_clients, cfg.batch_size, cfg.learning_rate) == (51, 83, 0.1)
    assert (cfg.momentum, cfg.momentum_place) == (0.9, "server")
    assert (cfg.weight_decay, cfg.clip_grad) == (0.0, 0.0)
    assert (cfg.init, cfg.partitioning, cfg.model) == ("xavier", "shards", "mlp")


def test_alie_table1() -> None:
    runs = _runs("paper_alie_table1")
    cases = Counter()
    for cfg in runs:
        _alie_protocol(cfg)
        if cfg.attack == "none":
            assert cfg.rule == "average"
            cases["none"] += 1
            continue
        assert cfg.attack == "alie"
        assert cfg.attack_options == {"z": 1.5, "omniscient": False, "sigma": "population"}
        assert cfg.num_byzantine in (12, 24)
        if cfg.rule == "krum" and cfg.rule_options:
            assert cfg.rule_options == {
                "distance": "plain",
                "neighbours": cfg.num_clients - cfg.num_byzantine,
            }
            cases[f"krum-coded-{cfg.num_byzantine}"] += 1
        else:
            assert cfg.rule_options == {}
            cases[f"{cfg.rule}-{cfg.num_byzantine}"] += 1
    assert cases == {
        "none": 3,
        **{f"{r}-12": 3 for r in ("average", "trimmed_mean", "nearest_median", "krum", "bulyan")},
        **{f"{r}-24": 3 for r in ("average", "trimmed_mean", "nearest_median", "krum")},
        "krum-coded-12": 3,
        "krum-coded-24": 3,
    }


def test_alie_table2_backdoor() -> None:
    runs = _runs("paper_alie_table2")
    rules = Counter()
    for cfg in runs:
        _alie_protocol(cfg)
        if cfg.attack == "none":
            rules["none"] += 1
            continue
        assert cfg.attack == "alie_backdoor" and cfg.num_byzantine == 12
        assert cfg.attack_options["omniscient"] is False
        assert (cfg.attack_options["z"], cfg.attack_options["alpha"]) == (0.2, 0.2)
        coded = cfg.rule == "krum" and cfg.rule_options == {"distance": "plain", "neighbours": 39}
        rules["krum-coded" if coded else cfg.rule] += 1
    assert rules == {
        r: 3
        for r in (
            "none",
            "average",
            "trimmed_mean",
            "nearest_median",
            "krum",
            "krum-coded",
            "bulyan",
        )
    }


def test_momentum_mnist() -> None:
    runs = _runs("paper_momentum_mnist")
    cells = Counter()
    for cfg in runs:
        assert (cfg.momentum, cfg.batch_size, cfg.weight_decay, cfg.clip_grad) == (
            0.9,
            83,
            1e-4,
            2.0,
        )
        assert cfg.momentum_place in ("server", "worker")
        assert cfg.learning_rate in (0.5, 0.02)
        if cfg.attack == "none":
            assert cfg.rule == "average" and cfg.num_clients in (39, 27)  # n - f honest workers
            cells[("none", cfg.num_clients)] += 1
            continue
        n, f = cfg.num_clients, cfg.num_byzantine
        assert n == 51 and f in (12, 24) and cfg.attack in ("alie", "ipm")
        if cfg.rule == "multi_krum":
            expected = {"m": n - f - 2, "distance": "plain", "neighbours": n - f - 1}
            assert cfg.rule_options == expected
        elif cfg.rule == "bulyan":
            assert f == 12 and cfg.rule_options == {"variant": "momentum"}
        else:
            assert cfg.rule == "median"
        cells[(cfg.attack, cfg.rule, f)] += 1
    # every cell: 2 momentum places x 2 learning rates x 5 seeds
    assert set(cells.values()) == {20}
    assert len(cells) == 12


def test_phocas() -> None:
    runs = _runs("paper_phocas")
    for cfg in runs:
        assert (cfg.num_clients, cfg.model, cfg.batch_size, cfg.learning_rate) == (
            20,
            "mlp128",
            32,
            0.1,
        )
        eight = (cfg.channel_fault == "bit_flip" and cfg.rule in ("krum", "multi_krum")) or (
            cfg.channel_fault == "gambler" and cfg.rule in ("krum", "multi_krum", "phocas")
        )
        assert cfg.num_byzantine == (8 if eight else 6), cfg.run_name
    faults = Counter((r.attack, r.channel_fault) for r in runs)
    assert set(faults.values()) == {50}  # 5 rules x 10 repetitions per attack


def test_bulyan_lp() -> None:
    runs = _runs("paper_bulyan_lp")
    variants = Counter()
    for cfg in runs:
        assert (cfg.num_clients, cfg.num_byzantine, cfg.lr_schedule_r) == (39, 9, 10000.0)
        assert cfg.learning_rate in (1.0, 0.2)
        if cfg.attack == "none":
            assert cfg.rule == "average"
            variants["none"] += 1
        else:
            assert cfg.attack == "lp_coordinate" and cfg.rule in ("krum", "medoid", "bulyan")
            variants[cfg.attack_options["norm"]] += 1
    assert variants == {"none": 6, "inf": 18, "l2": 18}
