"""Gradient-mode SGD, lr schedule, server momentum, weight decay and clipping vs a float64 hand
computation over 3 rounds; the same step in weights mode; option validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategy_fakes import (
    flat,
    from_record,
    honest_update,
    initial_arrays,
    make_client_app,
    node_configs,
    to_record,
)

from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Average, ServerOptimizer, ServerUpdateConfig

NODES, ROUNDS = 3, 3
SAMPLING = {"fraction_evaluate": 0.0, "min_train_nodes": NODES, "min_available_nodes": NODES}


def _reference(
    mode: str,
    lr: float,
    r: float | None,
    mu: float,
    wd: float,
    clip: float | None,
) -> tuple[np.ndarray, list[float]]:
    """float64 hand computation of ROUNDS server steps on the mean of the nodes' updates."""
    theta = flat(initial_arrays())
    buffer = None
    rates = []
    for t in range(1, ROUNDS + 1):
        mean = np.mean([flat(honest_update(i, t)) for i in range(1, NODES + 1)], axis=0)
        g = mean if mode == "gradient" else -mean
        if clip is not None and np.linalg.norm(g) > clip:
            g = g * clip / np.linalg.norm(g)
        d = g + wd * theta
        buffer = d if buffer is None else mu * buffer + d
        step = buffer if mu else d
        eta = lr if r is None else lr * r / ((t - 1) + r)
        rates.append(eta)
        theta = theta - eta * step
    return theta, rates


CASES = {
    "sgd": dict(lr=0.1, r=None, mu=0.0, wd=0.0, clip=None),
    "schedule": dict(lr=0.5, r=2.0, mu=0.0, wd=0.0, clip=None),
    "momentum": dict(lr=0.1, r=None, mu=0.9, wd=0.0, clip=None),
    "weight-decay": dict(lr=0.1, r=None, mu=0.0, wd=0.01, clip=None),
    "clip": dict(lr=0.1, r=None, mu=0.0, wd=0.0, clip=0.5),
    "all": dict(lr=0.3, r=3.0, mu=0.5, wd=0.05, clip=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_mode_matches_hand_computation_over_three_rounds(case: str) -> None:
    c = CASES[case]
    seen: list[dict] = []
    strategy = Average(
        update_mode="gradient",
        learning_rate=c["lr"],
        lr_schedule_r=c["r"],
        server_momentum=c["mu"],
        weight_decay=c["wd"],
        clip_norm=c["clip"],
        **SAMPLING,
    )
    grid = InProcessGrid(make_client_app("gradient", seen), node_configs(["honest"] * NODES))
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=ROUNDS)
    expected, rates = _reference("gradient", c["lr"], c["r"], c["mu"], c["wd"], c["clip"])
    np.testing.assert_allclose(flat(from_record(result.arrays)), expected, rtol=2e-5, atol=2e-5)
    # the current learning rate travels in the train config
    by_round = {int(cfg["server-round"]): cfg["learning-rate"] for cfg in seen}
    assert [by_round[t] for t in range(1, ROUNDS + 1)] == pytest.approx(rates)


def test_weights_mode_defaults_add_the_aggregate_and_options_act_on_minus_it() -> None:
    grid = InProcessGrid(make_client_app("weights"), node_configs(["honest"] * NODES))
    plain = Average(**SAMPLING).start(grid, to_record(initial_arrays()), num_rounds=ROUNDS)
    expected, _ = _reference("weights", 1.0, None, 0.0, 0.0, None)
    np.testing.assert_allclose(flat(from_record(plain.arrays)), expected, rtol=2e-5, atol=2e-5)

    strategy = Average(learning_rate=0.5, server_momentum=0.9, **SAMPLING)
    result = strategy.start(grid, to_record(initial_arrays()), num_rounds=ROUNDS)
    expected, _ = _reference("weights", 0.5, None, 0.9, 0.0, None)
    np.testing.assert_allclose(flat(from_record(result.arrays)), expected, rtol=2e-5, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(1e-3, 2.0),
    r=st.one_of(st.none(), st.floats(0.5, 10.0)),
    mu=st.floats(0.0, 0.99),
    wd=st.floats(0.0, 0.1),
    clip=st.one_of(st.none(), st.floats(0.1, 10.0)),
    seed=st.integers(0, 2**16),
)
def test_server_optimizer_matches_float64_reference(lr, r, mu, wd, clip, seed) -> None:
    rng = np.random.default_rng(seed)
    theta0 = rng.standard_normal(20)
    aggregates = [rng.standard_normal(20) * 3 for _ in range(4)]
    optimizer = ServerOptimizer(
        ServerUpdateConfig("gradient", lr, r, server_momentum=mu, weight_decay=wd, clip_norm=clip)
    )
    theta = torch.tensor(theta0)
    ref, buffer = theta0.copy(), None
    for t, a in enumerate(aggregates, start=1):
        theta = optimizer.step(theta, torch.tensor(a), t)
        g = a * min(1.0, clip / np.linalg.norm(a)) if clip is not None else a
        d = g + wd * ref
        buffer = d if buffer is None else mu * buffer + d
        eta = lr if r is None else lr * r / (t - 1 + r)
        ref = ref - eta * (buffer if mu else d)
    np.testing.assert_allclose(theta.numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"update_mode": "gradient"}, "needs a learning_rate"),
        ({"update_mode": "sgd"}, "update_mode must be one of"),
        ({"learning_rate": -1.0}, "learning_rate must be"),
        ({"server_momentum": 1.0}, "server_momentum must be in"),
        ({"weight_decay": -0.1}, "weight_decay must be"),
        ({"clip_norm": 0.0}, "clip_norm must be"),
        ({"lr_schedule_r": 0.0}, "lr_schedule_r must be"),
        ({"on_too_few": "ignore"}, "on_too_few must be one of"),
        ({"num_byzantine": -1}, "num_byzantine must be >= 0"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Average(**kwargs)


@pytest.mark.parametrize(("mode", "lr"), [("weights", None), ("weights", 0.1), ("weights", 1.0),
                                        ("weights", 0.37), ("gradient", 0.1), ("gradient", 1.0),
                                        ("gradient", 0.37)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_plain_step_is_theta_minus_eta_times_the_gradient(mode, lr, dtype) -> None:
    """No clipping, decay or momentum: the new model is ``theta - eta g`` (``g = a`` in gradient
    mode, ``-a`` in weights mode) in the dtype, bit for bit (signed zeros and overflow to inf
    included)."""
    generator = torch.Generator().manual_seed(5)
    theta = torch.randn(1000, generator=generator, dtype=torch.float64).to(dtype)
    aggregate = torch.randn(1000, generator=generator, dtype=torch.float64).to(dtype)
    theta[:4] = torch.tensor([-0.0, 0.0, -0.0, 1.0], dtype=dtype)
    aggregate[:4] = torch.tensor([0.0, -0.0, -0.0, torch.finfo(dtype).max], dtype=dtype)
    optimizer = ServerOptimizer(ServerUpdateConfig(mode, lr, 3.0))
    for server_round in (1, 4):
        eta = optimizer.config.learning_rate_at(server_round)
        got = optimizer.step(theta, aggregate, server_round)
        expected = theta - eta * (aggregate if mode == "gradient" else -aggregate)
        assert torch.equal(got, expected) and torch.equal(got.signbit(), expected.signbit())
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
