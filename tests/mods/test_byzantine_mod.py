"""byzantine_mod and adversary_grid against the attacks' definitions, in both record layouts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from flwr_byz import attacks
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.mods import (
    NEEDS_HONEST,
    RELAY_ARRAYS,
    adversary_grid,
    byzantine_mod,
    poison_batch,
    resolve_role,
)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Message(...)`` needs a run id and node id, which only a Flower runtime sets."""
    monkeypatch.setattr(TaskIdentity, "_run_id", TaskIdentity._run_id or 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", TaskIdentity._node_id or 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", TaskIdentity._task_id or 1)


GLOBAL = {
    "w": RNG.normal(size=(3, 4)).astype(np.float32),
    "b": RNG.normal(size=4).astype(np.float32),
}
TRAINED = {k: (v + RNG.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def _flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.reshape(-1) for v in arrays.values()]).astype(np.float64)


def _context(node: dict | None = None, run: dict | None = None) -> Context:
    return Context(1, 7, dict(node or {}), RecordDict(), dict(run or {}))


def _message_api(arrays: dict[str, np.ndarray], rnd: int = 3) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": rnd}),
        }
    )
    return Message(content, dst_node_id=7, message_type="train")


def _message_api_train(
    reply_arrays: dict[str, np.ndarray],
) -> Callable[[Message, Context], Message]:
    def call_next(msg: Message, context: Context) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in reply_arrays.items()}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content, reply_to=msg)

    return call_next


def _legacy(arrays: dict[str, np.ndarray]) -> Message:
    ins = FitIns(ndarrays_to_parameters(list(arrays.values())), {"server_round": 3})
    return Message(compat.fitins_to_recorddict(ins, True), dst_node_id=7, message_type="train")


def _legacy_train(reply_arrays: dict[str, np.ndarray]) -> Callable[[Message, Context], Message]:
    def call_next(msg: Message, context: Context) -> Message:
        res = FitRes(
            Status(Code.OK, ""), ndarrays_to_parameters(list(reply_arrays.values())), 10, {}
        )
        return Message(compat.fitres_to_recorddict(res, True), reply_to=msg)

    return call_next


def _reply_vector(reply: Message) -> np.ndarray:
    records = reply.content.array_records
    if "fitres.parameters" in records:
        res = compat.recorddict_to_fitres(reply.content, True)
        return np.concatenate([a.reshape(-1) for a in parameters_to_ndarrays(res.parameters)])
    return np.concatenate([a.numpy().reshape(-1) for a in records["arrays"].values()])


LAYOUTS = [(_message_api, _message_api_train), (_legacy, _legacy_train)]


@pytest.mark.parametrize(("make", "train"), LAYOUTS)
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_sign_flip_update_both_layouts(make, train, scale) -> None:
    mod = byzantine_mod("sign_flip", {"scale": scale}, byzantine=True)
    reply = mod(make(GLOBAL), _context(), train(TRAINED))
    g, h = _flat(GLOBAL), _flat(TRAINED)
    np.testing.assert_allclose(_reply_vector(reply), g - scale * (h - g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("make", "train"), LAYOUTS)
def test_legacy_and_message_api_keep_layout(make, train) -> None:
    reply = byzantine_mod("sign_flip", byzantine=True)(make(GLOBAL), _context(), train(TRAINED))
    if "fitres.parameters" in reply.content.array_records:
        res = compat.recorddict_to_fitres(reply.content, True)  # Flower can still read it
        shapes = [a.shape for a in parameters_to_ndarrays(res.parameters)]
        assert res.num_examples == 10
    else:
        shapes = [a.numpy().shape for a in reply.content.array_records["arrays"].values()]
        assert reply.content.metric_records["metrics"]["num-examples"] == 10
    assert shapes == [v.shape for v in GLOBAL.values()]


def test_reply_mode_attacks_the_reply_itself() -> None:
    mod = byzantine_mod("sign_flip", byzantine=True, vector="reply")
    reply = mod(_message_api(GLOBAL), _context(), _message_api_train(TRAINED))
    np.testing.assert_allclose(_reply_vector(reply), -_flat(TRAINED), rtol=1e-6)


def test_honest_node_and_evaluate_pass_through() -> None:
    call_next = _message_api_train(TRAINED)
    run = {"byzantine-partitions": "0,1", "attack": "sign_flip"}
    reply = byzantine_mod()(_message_api(GLOBAL), _context({"partition-id": 2}, run), call_next)
    np.testing.assert_array_equal(_reply_vector(reply), _flat(TRAINED))
    msg = _message_api(GLOBAL)
    msg.metadata.message_type = "evaluate"
    seen = []
    byzantine_mod("sign_flip", byzantine=True)(msg, _context(), lambda m, c: seen.append(m) or m)
    assert seen == [msg]


def test_role_from_run_config_and_node_config() -> None:
    run = {"byzantine-partitions": "1,3", "attack": "gaussian", "attack-options": '{"std": 2.0}'}
    role = resolve_role(_context({"partition-id": 3}, run))
    assert (role.attack, dict(role.options), role.rank, role.attackers) == (
        "gaussian",
        {"std": 2.0},
        1,
        2,
    )
    assert not resolve_role(_context({"partition-id": 0}, run)).byzantine
    assert (
        resolve_role(_context({"byzantine": "true", "attack": "sign_flip"})).attack == "sign_flip"
    )
    first = {"byzantine-partitions": "", "num-byzantine": 2, "attack": "sign_flip"}
    assert resolve_role(_context({"partition-id": 1}, first)).byzantine
    assert not resolve_role(_context({"partition-id": 2}, first)).byzantine
    with pytest.raises(ValueError, match="unsupported attack"):
        resolve_role(_context({"byzantine": True, "attack": "nope"}))


def test_unknown_own_option_is_refused() -> None:
    mod = byzantine_mod("sign_flip", {"sigma": 1.0}, byzantine=True)
    with pytest.raises(ValueError, match="does not take option"):
        mod(_message_api(GLOBAL), _context(), _message_api_train(TRAINED))


def test_gaussian_is_global_plus_seeded_noise() -> None:
    mod = byzantine_mod("gaussian", {"std": 5.0}, byzantine=True)
    a = _reply_vector(mod(_message_api(GLOBAL), _context(), _message_api_train(TRAINED)))
    b = _reply_vector(mod(_message_api(GLOBAL), _context(), _message_api_train(TRAINED)))
    np.testing.assert_array_equal(a, b)  # reproducible per (seed, node, round)
    noise = a - _flat(GLOBAL)
    assert 2.0 < noise.std() < 10.0 and not np.allclose(noise, _flat(TRAINED) - _flat(GLOBAL))


def test_bit_flip_flips_the_update_bits() -> None:
    mod = byzantine_mod("bit_flip", {"coordinates": 4, "bits": [32]}, byzantine=True)
    reply = mod(_message_api(GLOBAL), _context(), _message_api_train(TRAINED))
    update = torch.from_numpy(_flat(TRAINED) - _flat(GLOBAL)).to(torch.float32)
    expect = update.clone()
    expect[:4] = -expect[:4]  # bit 32 is the sign; one attacker hits all 4 first coordinates
    np.testing.assert_allclose(_reply_vector(reply), _flat(GLOBAL) + expect.numpy(), rtol=1e-5)


def test_gambler_scales_the_chosen_shard() -> None:
    opts = {"shards": 2, "shard": 0, "probability": 1.0, "scale": -10.0}
    reply = byzantine_mod("gambler", opts, byzantine=True)(
        _message_api(GLOBAL), _context(), _message_api_train(TRAINED)
    )
    update = _flat(TRAINED) - _flat(GLOBAL)
    expect = update.copy()
    expect[: update.size // 2] *= -10.0
    np.testing.assert_allclose(_reply_vector(reply), _flat(GLOBAL) + expect, rtol=1e-5, atol=1e-5)


def test_poison_batch_inside_the_mod_only_for_byzantine() -> None:
    x, y = torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 9])
    seen = {}

    def call_next(msg: Message, context: Context) -> Message:
        seen["xy"] = poison_batch(context, x, y, num_classes=10)
        return _message_api_train(TRAINED)(msg, context)

    reply = byzantine_mod("label_flip", byzantine=True)(_message_api(GLOBAL), _context(), call_next)
    assert seen["xy"][1].tolist() == [9, 8, 7, 0]
    np.testing.assert_array_equal(_reply_vector(reply), _flat(TRAINED))  # data attack only
    byzantine_mod("label_flip", byzantine=False)(_message_api(GLOBAL), _context(), call_next)
    assert seen["xy"][1].tolist() == [0, 1, 2, 9]
    bd = byzantine_mod("backdoor", {"fraction": 0.5, "trigger": 3.0}, byzantine=True)
    bd(_message_api(GLOBAL), _context(), call_next)
    px, py = seen["xy"]
    assert py.tolist() == [attacks.BACKDOOR_TARGET] * 2 + [2, 9]
    assert float(px[0, 0, :5, :5].min()) == 3.0 and float(px[2].abs().max()) == 0.0


def test_omniscient_without_relay_answers_the_marker_error() -> None:
    called = []
    reply = byzantine_mod("ipm", byzantine=True)(
        _message_api(GLOBAL), _context(), lambda m, c: called.append(1)
    )
    assert reply.has_error() and reply.error.reason == NEEDS_HONEST and not called


class _FakeGrid:
    """Runs each message through the ClientApp callable of its node (honest or Byzantine)."""

    def __init__(self, apps: dict[int, Callable[[Message], Message]]) -> None:
        self.apps, self.calls = apps, []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.calls.append([m.metadata.dst_node_id for m in messages])
        out = []
        for m in messages:
            reply = self.apps[m.metadata.dst_node_id](m)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            out.append(reply)
        return out


@pytest.mark.parametrize(("make", "train"), LAYOUTS)
def test_adversary_grid_relays_honest_updates_to_ipm(make, train) -> None:
    honest = {
        node: {k: (v + RNG.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
        for node in (1, 2, 3)
    }
    mod = byzantine_mod("ipm", {"eps": 0.5}, byzantine=True)
    apps = {node: (lambda m, a=arrays: train(a)(m, _context())) for node, arrays in honest.items()}
    apps[4] = lambda m: mod(m, _context(), train(TRAINED))
    fake = _FakeGrid(apps)
    grid = adversary_grid(fake)
    for _ in range(2):
        msgs = [make(GLOBAL) for _ in range(4)]
        for node, m in zip((1, 2, 3, 4), msgs, strict=True):
            m.metadata.dst_node_id = node
        replies = list(grid.send_and_receive(msgs))
        assert sorted(r.metadata.src_node_id for r in replies) == [1, 2, 3, 4]
        assert not any(r.has_error() for r in replies)
        byz = next(r for r in replies if r.metadata.src_node_id == 4)
        updates = np.stack([_flat(a) - _flat(GLOBAL) for a in honest.values()])
        expect = _flat(GLOBAL) - 0.5 * updates.mean(axis=0)
        np.testing.assert_allclose(_reply_vector(byz), expect, rtol=1e-5, atol=1e-5)
    assert fake.calls == [[1, 2, 3, 4], [4], [1, 2, 3], [4]]  # learned once, then ordered
    assert all(RELAY_ARRAYS not in m.content for m in msgs)


def test_adversary_grid_alie_matches_definition() -> None:
    honest = {n: {k: v + float(n) for k, v in TRAINED.items()} for n in (1, 2, 3, 4)}
    mod = byzantine_mod("alie", {"z": 1.0}, byzantine=True)
    apps = {n: (lambda m, a=a: _message_api_train(a)(m, _context())) for n, a in honest.items()}
    apps[5] = lambda m: mod(m, _context(), _message_api_train(TRAINED))
    grid = adversary_grid(_FakeGrid(apps))
    msgs = []
    for node in (1, 2, 3, 4, 5):
        m = _message_api(GLOBAL)
        m.metadata.dst_node_id = node
        msgs.append(m)
    byz = next(r for r in grid.send_and_receive(msgs) if r.metadata.src_node_id == 5)
    updates = torch.from_numpy(np.stack([_flat(a) - _flat(GLOBAL) for a in honest.values()]))
    expect = _flat(GLOBAL) + attacks.alie(updates, 5, 1, z=1.0).numpy()
    np.testing.assert_allclose(_reply_vector(byz), expect, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------- real ClientApps, in process

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "attacked-quickstart"


def _example_app():
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    from attacked_quickstart.client_app import app
    from attacked_quickstart.task import Net

    return app, Net


def _train_messages(arrays: ArrayRecord, nodes: list[int], legacy: bool = False) -> list[Message]:
    out = []
    for node in nodes:
        if legacy:
            params = ndarrays_to_parameters([a.numpy() for a in arrays.values()])
            content = compat.fitins_to_recorddict(FitIns(params, {"server_round": 1}), True)
        else:
            config = ConfigRecord({"server-round": 1, "lr": 0.1})
            content = RecordDict({"arrays": arrays, "config": config})
        out.append(Message(content, dst_node_id=node, message_type="train"))
    return out


def _replies_by_node(grid, arrays: ArrayRecord, legacy: bool = False) -> dict[int, np.ndarray]:
    replies = grid.send_and_receive(_train_messages(arrays, [1, 2, 3, 4], legacy))
    out = {}
    for reply in replies:
        assert not reply.has_error(), reply.error.reason
        out[reply.metadata.src_node_id] = _reply_vector(reply)
    return out


RUN = {"num-server-rounds": 1, "local-epochs": 1, "lr": 0.1, "byzantine-partitions": "0"}


def test_example_app_sign_flip_through_in_process_grid() -> None:
    app, net = _example_app()
    torch.manual_seed(0)
    arrays = ArrayRecord(net().state_dict())
    g = np.concatenate([a.numpy().reshape(-1) for a in arrays.values()]).astype(np.float64)
    honest = _replies_by_node(InProcessGrid(app, [{}] * 4, {**RUN, "attack": "none"}), arrays)
    attacked_run = {**RUN, "attack": "sign_flip", "attack-options": '{"scale": 10.0}'}
    attacked = _replies_by_node(InProcessGrid(app, [{}] * 4, attacked_run), arrays)
    np.testing.assert_allclose(attacked[1], g - 10.0 * (honest[1] - g), rtol=1e-4, atol=1e-5)
    for node in (2, 3, 4):  # partitions 1..3 are honest
        np.testing.assert_array_equal(attacked[node], honest[node])


class _NumPyClient(NumPyClient):
    """A legacy client: one fixed step ``w + 1`` from the received weights."""

    def fit(self, parameters, config):
        return [p + 1.0 for p in parameters], 5, {}


def test_legacy_client_fn_app_sign_flip() -> None:
    app = ClientApp(client_fn=lambda context: _NumPyClient().to_client(), mods=[byzantine_mod()])
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    grid = InProcessGrid(app, [{}] * 4, {"byzantine-partitions": "0,2", "attack": "sign_flip"})
    replies = _replies_by_node(grid, arrays, legacy=True)
    g = _flat(GLOBAL)
    for node, expect in {1: g - 1.0, 2: g + 1.0, 3: g - 1.0, 4: g + 1.0}.items():
        np.testing.assert_allclose(replies[node], expect, rtol=1e-6)


def test_example_app_ipm_through_adversary_grid_and_fedavg() -> None:
    app, net = _example_app()
    torch.manual_seed(0)
    arrays = ArrayRecord(net().state_dict())
    g = np.concatenate([a.numpy().reshape(-1) for a in arrays.values()]).astype(np.float64)
    honest = _replies_by_node(InProcessGrid(app, [{}] * 4, {**RUN, "attack": "none"}), arrays)
    run = {**RUN, "attack": "ipm", "attack-options": '{"eps": 2.0}'}
    grid = adversary_grid(InProcessGrid(app, [{}] * 4, run))
    attacked = _replies_by_node(grid, arrays)
    updates = np.stack([honest[n] - g for n in (2, 3, 4)])
    np.testing.assert_allclose(attacked[1], g - 2.0 * updates.mean(axis=0), rtol=1e-4, atol=1e-5)
    result = FedAvg(fraction_evaluate=0.0).start(grid=grid, initial_arrays=arrays, num_rounds=2)
    assert set(result.train_metrics_clientapp) == {1, 2}
    assert grid.byzantine_node_ids == {1}


# --------------------------------------------------------------- Flower's simulation engine

SIM_NODES, SIM_ROUNDS = 4, 2
SIM_RESULTS: list = []


def _sim_is_byzantine(context: Context) -> bool:
    return int(context.node_config["partition-id"]) == 3


sim_client = ClientApp(mods=[byzantine_mod("ipm", {"eps": 2.0}, byzantine=_sim_is_byzantine)])


@sim_client.train()
def _sim_train(message: Message, context: Context) -> Message:
    """Every node's honest update is +1 on every weight."""
    w = message.content["arrays"]["w"].numpy()
    out = ArrayRecord({"w": Array(w + np.float32(1.0))})
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": out, "metrics": metrics}), reply_to=message)


sim_server = ServerApp()


@sim_server.main()
def _sim_main(grid: Grid, context: Context) -> None:
    grid = adversary_grid(grid)
    strategy = FedAvg(
        fraction_evaluate=0.0, min_train_nodes=SIM_NODES, min_available_nodes=SIM_NODES
    )
    initial = ArrayRecord({"w": Array(np.zeros(5, np.float32))})
    result = strategy.start(grid, initial, num_rounds=SIM_ROUNDS)
    SIM_RESULTS.append((result, set(grid.byzantine_node_ids)))


def test_ipm_through_run_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 nodes on Flower's simulation engine (Ray), node of partition 3 runs IPM (eps 2)."""
    from flwr.simulation import run_simulation

    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    SIM_RESULTS.clear()
    run_simulation(
        server_app=sim_server,
        client_app=sim_client,
        num_supernodes=SIM_NODES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    assert len(SIM_RESULTS) == 1, "the ServerApp did not finish"
    result, byzantine = SIM_RESULTS[0]
    # per round: 3 honest updates +1 and IPM's -eps * mean = -2, averaged: +0.25
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(5, 0.25 * SIM_ROUNDS))
    assert len(byzantine) == 1


@pytest.mark.parametrize(("strategy", "low", "high"), [("fedavg", 0.0, 0.5), ("median", 0.9, 1.0)])
def test_example_server_app_under_sign_flip(
    strategy: str, low: float, high: float, tmp_path
) -> None:
    """The example end to end (4 nodes, partition 0 sign-flips 10x): FedAvg breaks, Median holds."""
    app, _ = _example_app()
    from attacked_quickstart.server_app import main

    results = tmp_path / "results.json"
    run = {
        **RUN,
        "num-server-rounds": 3,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "min-nodes": 4,
        "strategy": strategy,
        "num-byzantine": 1,
        "attack": "sign_flip",
        "attack-options": '{"scale": 10.0}',
        "results-file": str(results),
    }
    main(InProcessGrid(app, [{}] * 4, run), Context(1, 0, {}, RecordDict(), run))
    accuracy = json.loads(results.read_text())["test-accuracy"]
    assert low <= accuracy <= high
