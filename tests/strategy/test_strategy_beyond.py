"""Beyond the seeds in the strategies: the pre-aggregation chain, CenteredClipping (state across
rounds), FLTrust (server update callable) and DnC (seeded), checked against the kernels called by
hand on the same deltas (and a float64 reference)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from strategy_fakes import (
    SHAPES,
    flat,
    honest_update,
    initial_arrays,
    make_client_app,
    node_configs,
    to_record,
)

import flwr_byz.strategy as strategies
from flwr_byz import gars
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import RobustAggregator, Submission, legacy, round_seed

F = 2
ROLES = ["honest"] * 9 + ["flip", "flip"]  # node ids 1..11, the last two Byzantine
N = len(ROLES)
SAMPLING = {"fraction_evaluate": 0.0, "min_train_nodes": N, "min_available_nodes": N}
LEGACY_SAMPLING = {"fraction_fit": 1.0, "min_fit_clients": N, "min_available_clients": N}


# ------------------------------------------------------------------ helpers
def _replies(model: dict[str, np.ndarray], server_round: int) -> list[dict[str, np.ndarray]]:
    """Weights-mode replies of the ROLES nodes (global + update; flip: -100 x update)."""
    out = []
    for node, role in enumerate(ROLES, start=1):
        update = honest_update(node, server_round)
        scale = -100.0 if role == "flip" else 1.0
        reply = {k: (model[k] + scale * update[k]).astype(np.float32) for k in SHAPES}
        reply.update({k: v for k, v in model.items() if k not in SHAPES})
        out.append(reply)
    return out


def _subs(replies: list[dict[str, np.ndarray]]) -> list[Submission]:
    return [Submission(node, reply) for node, reply in enumerate(replies, start=1)]


def _deltas(
    model: dict[str, np.ndarray], replies: list[dict[str, np.ndarray]], dtype: Any = np.float32
) -> torch.Tensor:
    """The ``(n, d)`` deltas by hand (float32 as the engine, or float64 for a reference)."""
    theta = flat(model).astype(dtype)
    return torch.from_numpy(np.stack([flat(r).astype(dtype) - theta for r in replies]))


def _step(aggregator: RobustAggregator, model: dict, replies: list, server_round: int):
    """One engine round; returns (aggregate the server added, new arrays, report)."""
    aggregator.set_global(model)
    new, report = aggregator.aggregate(server_round, _subs(replies))
    return flat(new) - flat(model), new, report


def _round(strategy, grid, arrays: dict[str, np.ndarray], server_round: int):
    """One Message-API round by hand; returns the replies, new arrays and metrics."""
    messages = strategy.configure_train(server_round, to_record(arrays), ConfigRecord(), grid)
    replies = grid.send_and_receive(messages)
    record, metrics = strategy.aggregate_train(server_round, replies)
    return replies, {k: v.numpy() for k, v in record.items()}, metrics


def _legacy_round(strategy, grid, arrays: dict[str, np.ndarray], replies, server_round: int):
    """The same replies through the legacy API; returns the new ndarrays and metrics."""
    manager = SimpleClientManager()
    proxies = {node: GridClientProxy(node, grid, run_id=1) for node in grid.get_node_ids()}
    for proxy in proxies.values():
        manager.register(proxy)
    strategy.configure_fit(server_round, ndarrays_to_parameters(list(arrays.values())), manager)
    results = []
    for reply in replies:
        ndarrays = [a.numpy() for a in reply.content["arrays"].values()]
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(ndarrays), 10, {})
        results.append((proxies[reply.metadata.src_node_id], res))
    parameters, metrics = strategy.aggregate_fit(server_round, results, [])
    return parameters_to_ndarrays(parameters), metrics


def _reply_deltas(arrays: dict[str, np.ndarray], replies) -> tuple[list[int], torch.Tensor]:
    nodes = [int(r.metadata.src_node_id) for r in replies]
    rows = [{k: v.numpy() for k, v in r.content["arrays"].items()} for r in replies]
    return nodes, _deltas(arrays, rows)


# ------------------------------------------------------------------ the chain
CHAINS = [
    (["arc", ("nnm", {})], "krum", {}),
    ([{"name": "clip", "c": 1.0}], "median", {}),
    ([("bucketing", {"s": 2}), "nnm"], "trimmed_mean", {}),
    (["nnm"], "multi_krum", {"m": 5}),
]


def _round_steps(pre: list, server_round: int) -> list[tuple[str, dict[str, Any]]]:
    """The chain as the engine runs it in ``server_round`` (bucketing seeded per round)."""
    steps = strategies.normalize_pre(pre)
    return [
        (name, {**opts, "seed": round_seed(0, server_round)} if name == "bucketing" else opts)
        for name, opts in steps
    ]


@pytest.mark.parametrize(("pre", "rule", "options"), CHAINS)
def test_a_round_with_pre_equals_the_kernel_chain_then_the_rule(
    pre: list, rule: str, options: dict
) -> None:
    model = initial_arrays()
    honest = range(1, N - F + 1)
    aggregator = RobustAggregator(
        rule, F, rule_options=options, device="cpu", pre=pre, honest_node_ids=honest
    )
    for server_round in (1, 2):
        replies = _replies(model, server_round)
        got, new, report = _step(aggregator, model, replies, server_round)
        steps = _round_steps(pre, server_round)
        want = gars.aggregate_chain(_deltas(model, replies), F, steps, rule, **options)
        np.testing.assert_allclose(got, want.vector.double().numpy(), rtol=1e-5, atol=1e-6)
        # float64 reference: same chain on float64 deltas
        ref64 = gars.aggregate_chain(_deltas(model, replies, np.float64), F, steps, rule, **options)
        np.testing.assert_allclose(got, ref64.vector.numpy(), rtol=1e-4, atol=1e-5)
        # participation mapped back to the nodes, byzantine influence through the chain
        shares = want.participation.numpy()
        assert report.participation == pytest.approx(dict(enumerate(shares, start=1)))
        assert report.metrics["byz.byzantine-influence"] == pytest.approx(shares[N - F :].sum())
        one_to_one = all(name in ("clip", "arc") for name, _ in steps)
        if gars.get(rule).selects and one_to_one:
            assert report.selected_node_ids == [int(i) + 1 for i in want.selected.tolist()]
        else:
            assert report.selected_node_ids is None
            assert "byz.selected-nodes" not in report.metrics
        assert report.kept_model is False
        model = new


def test_a_one_to_one_chain_keeps_selected_nodes() -> None:
    model = initial_arrays()
    aggregator = RobustAggregator("krum", F, device="cpu", pre=["arc"])
    replies = _replies(model, 1)
    _, _, report = _step(aggregator, model, replies, 1)
    want = gars.aggregate_chain(_deltas(model, replies), F, ["arc"], "krum")
    assert report.selected_node_ids == [int(want.selected[0]) + 1]
    assert report.metrics["byz.selected-nodes"] == report.selected_node_ids


def test_the_chain_runs_in_both_apis_on_the_same_replies() -> None:
    pre = ["arc", ("nnm", {})]
    modern = strategies.Krum(num_byzantine=F, pre=pre, device="cpu", **SAMPLING)
    old = legacy.Krum(num_byzantine=F, pre=pre, device="cpu", **LEGACY_SAMPLING)
    grid = InProcessGrid(make_client_app(), node_configs(ROLES))
    arrays = initial_arrays()
    replies, new_modern, metrics = _round(modern, grid, arrays, 1)
    new_old, old_metrics = _legacy_round(old, grid, arrays, replies, 1)
    _, deltas = _reply_deltas(arrays, replies)
    want = gars.aggregate_chain(deltas, F, pre, "krum").vector.double().numpy()
    np.testing.assert_allclose(flat(new_modern) - flat(arrays), want, rtol=1e-5, atol=1e-6)
    for got, ref in zip(new_old, new_modern.values(), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert "byz.selected-nodes" not in metrics and "byz.selected-nodes" not in old_metrics
    assert modern.pre == old.pre == [("arc", {}), ("nnm", {})]


@pytest.mark.parametrize(
    ("pre", "match"),
    [
        (["nope"], "nope"),
        ([("clip", {})], "clip"),
        ([{"name": "clip", "c": -1.0}], "clip"),
        ([("nnm", {"k": 3})], "nnm"),
        ([{"name": "bucketing", "s": 0}], "bucketing"),
        ([42], "step 0"),
        ("arc", "list of steps"),
    ],
)
def test_a_bad_step_fails_at_construction_in_both_apis(pre: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        strategies.Median(num_byzantine=1, pre=pre)
    with pytest.raises(ValueError, match=match):
        legacy.Median(num_byzantine=1, pre=pre)


def test_bucketing_needs_the_rule_requirement_on_the_bucket_means() -> None:
    # krum f=1 needs 5 rows; buckets of 2 give 5 rows from n >= 9
    aggregator = RobustAggregator("krum", 1, device="cpu", pre=[("bucketing", {"s": 2})])
    assert aggregator.min_replies == 9
    model = initial_arrays()
    aggregator.set_global(model)
    new, report = aggregator.aggregate(1, _subs(_replies(model, 1)[:8]))
    assert report.kept_model and "bucketing+krum needs n >= 9" in report.reason_kept
    assert all(np.array_equal(new[k], model[k]) for k in model)


# ------------------------------------------------------------------ centered clipping
def test_centered_clipping_keeps_its_center_across_rounds() -> None:
    model = initial_arrays()
    tau, L = 3.0, 2
    aggregator = RobustAggregator("centered_clipping", F, {"tau": tau, "L": L}, device="cpu")
    assert aggregator.state_dict()["center"] is None
    outputs = []
    center = None
    for server_round in (1, 2):
        replies = _replies(model, server_round)
        got, new, _ = _step(aggregator, model, replies, server_round)
        deltas = _deltas(model, replies)
        want = gars.centered_clipping(deltas, F, tau=tau, L=L, center=center)
        np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-5, atol=1e-6)
        # float64 reference with the float64 previous output
        center64 = None if not outputs else torch.from_numpy(outputs[-1])
        ref = gars.centered_clipping(
            _deltas(model, replies, np.float64), F, tau=tau, L=L, center=center64
        )
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
        outputs.append(ref.numpy())
        np.testing.assert_array_equal(aggregator.state_dict()["center"], want.numpy())
        center, model = want, new
    # a checkpoint restores the center: a fresh aggregator continues identically
    restored = RobustAggregator("centered_clipping", F, {"tau": tau, "L": L}, device="cpu")
    restored.load_state_dict(aggregator.state_dict())
    replies = _replies(model, 3)
    got_a, _, _ = _step(aggregator, model, replies, 3)
    got_b, _, _ = _step(restored, model, replies, 3)
    np.testing.assert_array_equal(got_a, got_b)
    with pytest.raises(ValueError, match="unknown state keys"):
        restored.load_state_dict({"centre": None})


def test_centered_clipping_center_restarts_after_a_layout_change() -> None:
    aggregator = RobustAggregator("centered_clipping", F, device="cpu")
    model = initial_arrays()
    _step(aggregator, model, _replies(model, 1), 1)
    assert aggregator.center is not None
    aggregator.set_global({"other": np.zeros(5, dtype=np.float32)})
    assert aggregator.center is None


def test_centered_clipping_strategies_in_both_apis() -> None:
    modern = strategies.CenteredClipping(num_byzantine=F, tau=2.0, L=3, device="cpu", **SAMPLING)
    old = legacy.CenteredClipping(num_byzantine=F, tau=2.0, L=3, device="cpu", **LEGACY_SAMPLING)
    grid = InProcessGrid(make_client_app(), node_configs(ROLES))
    arrays, center = initial_arrays(), None
    for server_round in (1, 2):
        replies, new_modern, _ = _round(modern, grid, arrays, server_round)
        new_old, _ = _legacy_round(old, grid, arrays, replies, server_round)
        _, deltas = _reply_deltas(arrays, replies)
        want = gars.centered_clipping(deltas, F, tau=2.0, L=3, center=center)
        np.testing.assert_allclose(flat(new_modern) - flat(arrays), want.double(), atol=1e-6)
        for got, ref in zip(new_old, new_modern.values(), strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(modern.state_dict()["center"], want.numpy(), atol=1e-7)
        np.testing.assert_allclose(old.state_dict()["center"], want.numpy(), atol=1e-7)
        arrays, center = new_modern, want
    with pytest.raises(ValueError, match="tau"):
        strategies.CenteredClipping(tau=0.0)
    with pytest.raises(ValueError, match="L must"):
        legacy.CenteredClipping(L=0)


# ------------------------------------------------------------------ FLTrust
class FakeServerUpdate:
    """A server update callable recording its calls: g_0 = the honest direction of the round
    (keyed like the global arrays, so the legacy API's ``"0", "1", ...`` too)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.calls: list[tuple[dict[str, np.ndarray], int]] = []
        self.scale = scale

    def __call__(self, global_arrays: dict[str, np.ndarray], server_round: int):
        self.calls.append((global_arrays, server_round))
        common = np.random.default_rng([7, server_round])
        floats = [(k, v.shape) for k, v in global_arrays.items() if v.dtype.kind == "f"]
        return {k: self.scale * common.standard_normal(shape) for k, shape in floats}


def test_fltrust_uses_the_server_update_of_the_round() -> None:
    model = initial_arrays()
    fake = FakeServerUpdate()
    aggregator = RobustAggregator("fltrust", F, device="cpu", server_update_fn=fake)
    for server_round in (1, 2):
        replies = _replies(model, server_round)
        got, new, report = _step(aggregator, model, replies, server_round)
        seen, seen_round = fake.calls[-1]
        assert seen_round == server_round
        assert all(np.array_equal(seen[k], model[k]) for k in model)
        g0 = torch.from_numpy(flat(fake(model, server_round)))
        want = gars.fltrust(_deltas(model, replies), F, server_update=g0)
        np.testing.assert_allclose(got, want.double().numpy(), rtol=1e-5, atol=1e-6)
        ref = gars.fltrust(_deltas(model, replies, np.float64), F, server_update=g0)
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
        assert not report.kept_model
        model = new


def test_fltrust_keeps_the_model_when_no_reply_is_trusted() -> None:
    model = initial_arrays()
    aggregator = RobustAggregator(
        "fltrust", F, device="cpu", server_update_fn=FakeServerUpdate(scale=-1.0)
    )
    replies = [r for r, role in zip(_replies(model, 1), ROLES, strict=True) if role == "honest"]
    aggregator.set_global(model)
    new, report = aggregator.aggregate(1, _subs(replies))
    assert report.kept_model and "trust score is 0" in report.reason_kept
    assert all(np.array_equal(new[k], model[k]) for k in model)


def test_fltrust_refuses_a_bad_server_update_and_needs_one() -> None:
    model = initial_arrays()
    aggregator = RobustAggregator(
        "fltrust", F, device="cpu", server_update_fn=lambda arrays, rnd: {"layer.bias": 0}
    )
    aggregator.set_global(model)
    _, report = aggregator.aggregate(1, _subs(_replies(model, 1)))
    assert report.kept_model and "server_update_fn" in report.reason_kept
    with pytest.raises(ValueError, match="server_update_fn"):
        RobustAggregator("fltrust", F)
    with pytest.raises(ValueError, match="fltrust only"):
        RobustAggregator("median", F, server_update_fn=FakeServerUpdate())
    with pytest.raises(TypeError):
        strategies.FLTrust(num_byzantine=F)  # type: ignore[call-arg]


def test_fltrust_strategies_in_both_apis() -> None:
    fake = FakeServerUpdate()
    modern = strategies.FLTrust(num_byzantine=F, server_update_fn=fake, device="cpu", **SAMPLING)
    old = legacy.FLTrust(num_byzantine=F, server_update_fn=fake, device="cpu", **LEGACY_SAMPLING)
    grid = InProcessGrid(make_client_app(), node_configs(ROLES))
    arrays = initial_arrays()
    replies, new_modern, metrics = _round(modern, grid, arrays, 1)
    new_old, _ = _legacy_round(old, grid, arrays, replies, 1)
    assert fake.calls[-1][1] == 1 and list(fake.calls[-1][0]) == ["0", "1", "2"]  # legacy keys
    _, deltas = _reply_deltas(arrays, replies)
    g0 = torch.from_numpy(flat(fake(arrays, 1)))
    want = gars.fltrust(deltas, F, server_update=g0).double().numpy()
    np.testing.assert_allclose(flat(new_modern) - flat(arrays), want, rtol=1e-5, atol=1e-6)
    for got, ref in zip(new_old, new_modern.values(), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert metrics["byz.kept-model"] == 0.0


# ------------------------------------------------------------------ DnC
def test_dnc_is_seeded_per_round_and_matches_the_kernel() -> None:
    model = initial_arrays()
    options = {"niters": 3, "b": 7, "c": 1.0, "seed": 5}
    aggregator = RobustAggregator("dnc", F, options, device="cpu")
    for server_round in (1, 2):
        replies = _replies(model, server_round)
        got, new, report = _step(aggregator, model, replies, server_round)
        seeded = {**options, "seed": round_seed(5, server_round)}
        want = gars.get("dnc").aggregate(_deltas(model, replies), F, **seeded)
        np.testing.assert_allclose(got, want.vector.double().numpy(), rtol=1e-5, atol=1e-6)
        assert report.selected_node_ids == [int(i) + 1 for i in want.selected.tolist()]
        assert not set(report.selected_node_ids) & {N - 1, N}  # the flips are filtered
        model = new


def test_dnc_strategies_agree_across_apis_and_runs() -> None:
    grid = InProcessGrid(make_client_app(), node_configs(ROLES))
    arrays = initial_arrays()
    kwargs = {"num_byzantine": F, "niters": 2, "b": 5, "seed": 3, "device": "cpu"}
    a = strategies.DnC(**kwargs, **SAMPLING)
    b = strategies.DnC(**kwargs, **SAMPLING)
    old = legacy.DnC(**kwargs, **LEGACY_SAMPLING)
    replies, new_a, metrics_a = _round(a, grid, arrays, 1)
    _, new_b, metrics_b = _round(b, grid, arrays, 1)
    new_old, metrics_old = _legacy_round(old, grid, arrays, replies, 1)
    for key in new_a:  # the sampling order may differ: same set, summed in another order
        np.testing.assert_allclose(new_a[key], new_b[key], rtol=1e-6, atol=1e-7)
    for got, ref in zip(new_old, new_a.values(), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    assert sorted(metrics_a["byz.selected-nodes"]) == sorted(metrics_b["byz.selected-nodes"])
    assert metrics_old["byz.selected-nodes"] == metrics_a["byz.selected-nodes"]
    with pytest.raises(ValueError, match="niters"):
        strategies.DnC(niters=0)


# ------------------------------------------------------------------ exports
@pytest.mark.parametrize(
    ("name", "requirement"),
    [("CenteredClipping", "n >= 2f + 1"), ("FLTrust", "root data"), ("DnC", "n >= 2f + 1")],
)
def test_the_new_classes_are_exported_in_both_apis(name: str, requirement: str) -> None:
    modern, old = getattr(strategies, name), getattr(legacy, name)
    assert name in strategies.__all__ and name in legacy.__all__
    assert requirement in modern.__doc__ and modern.__doc__ == old.__doc__
    assert strategies.BEYOND_STRATEGIES[modern.rule_name] is modern
    assert modern.rule_name in gars.BEYOND_NAMES and modern.rule_name not in strategies.STRATEGIES
    assert len(strategies.STRATEGIES) == len(gars.NAMES)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chain_and_state_agree_on_cuda_and_cpu() -> None:
    results = {}
    for device in ("cpu", "cuda"):
        aggregator = RobustAggregator(
            "centered_clipping", F, {"tau": 2.0, "L": 2}, device=device, pre=["arc", "nnm"]
        )
        model, outs = initial_arrays(), []
        for server_round in (1, 2):
            got, model, _ = _step(aggregator, model, _replies(model, server_round), server_round)
            outs.append(got)
        results[device] = (outs, aggregator.state_dict()["center"])
    for a, b in zip(results["cpu"][0], results["cuda"][0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results["cpu"][1], results["cuda"][1], rtol=1e-5, atol=1e-6)
