"""Honest clients: the gradient, worker momentum across rounds, persistence, weights mode."""

from __future__ import annotations

import pytest
import torch
from client_helpers import initial_arrays, make_grid, reference_gradient, reply_vector, run_round
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz import models


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 2e-4) -> None:
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= rtol * scale + 1e-7


def test_gradient_matches_float64_reference(arrays0: ArrayRecord) -> None:
    grid = make_grid(3, {})
    replies = run_round(grid, arrays0, rnd=4)
    for node, reply in replies.items():
        partition = node - 1
        _close(reply_vector(reply), reference_gradient(arrays0, 3, partition, 4))
        metrics = reply.content["metrics"]
        assert metrics["num-examples"] == 83
        assert metrics["train-loss"] > 0
        assert list(reply.content["arrays"].keys()) == list(arrays0.keys())
    # different partitions draw different batches
    assert not torch.equal(reply_vector(replies[1]), reply_vector(replies[2]))


def test_weight_decay_and_clipping(arrays0: ArrayRecord) -> None:
    decayed = run_round(make_grid(1, {"weight-decay": 0.01}), arrays0, rnd=1)[1]
    expected = reference_gradient(arrays0, 3, 0, 1, weight_decay=0.01)
    _close(reply_vector(decayed), expected)
    clipped = run_round(make_grid(1, {"clip-grad": 0.05}), arrays0, rnd=1)[1]
    plain = reference_gradient(arrays0, 3, 0, 1)
    assert float(plain.norm()) > 0.05  # the clip is active
    _close(reply_vector(clipped), plain * (0.05 / plain.norm()))


def _arrays_for_round(rnd: int) -> ArrayRecord:
    return initial_arrays(100 + rnd)  # a different received model each round


def test_worker_momentum_follows_recurrence_per_node() -> None:
    mu = 0.9
    grid = make_grid(3, {"momentum": mu, "momentum-place": "worker"})
    expected = {node: torch.zeros(1) for node in (1, 2, 3)}
    for rnd in (1, 2, 3):
        arrays = _arrays_for_round(rnd)
        replies = run_round(grid, arrays, rnd)
        for node in (1, 2, 3):
            g = reference_gradient(arrays, 3, node - 1, rnd)
            expected[node] = mu * expected[node] + g  # G_t = mu G_{t-1} + g_t, G_{-1} = 0
            _close(reply_vector(replies[node]), expected[node])


def test_server_momentum_place_sends_plain_gradient() -> None:
    grid = make_grid(1, {"momentum": 0.9, "momentum-place": "server"})
    for rnd in (1, 2):
        arrays = _arrays_for_round(rnd)
        _close(reply_vector(run_round(grid, arrays, rnd)[1]), reference_gradient(arrays, 3, 0, rnd))


def test_momentum_resumes_from_client_state_dir(tmp_path) -> None:
    def config(name: str) -> dict:
        return {"momentum": 0.5, "client-state-dir": str(tmp_path / name)}

    uninterrupted_grid = make_grid(2, config("a"))
    interrupted_grid = make_grid(2, config("b"))
    for rnd in (1, 2):
        run_round(uninterrupted_grid, _arrays_for_round(rnd), rnd)
        run_round(interrupted_grid, _arrays_for_round(rnd), rnd)
    uninterrupted = run_round(uninterrupted_grid, _arrays_for_round(3), 3)
    restarted = make_grid(2, config("b"))  # fresh nodes: empty context.state
    resumed = run_round(restarted, _arrays_for_round(3), 3)
    for node in (1, 2):
        _close(reply_vector(resumed[node]), reply_vector(uninterrupted[node]), rtol=1e-6)
    # a saved state from another round than t - 1 is ignored: round 5 starts from G = g_5
    stale = run_round(make_grid(2, config("a")), _arrays_for_round(5), 5)
    _close(reply_vector(stale[1]), reference_gradient(_arrays_for_round(5), 3, 0, 5))


def test_weights_mode_returns_trained_weights(arrays0: ArrayRecord) -> None:
    config = {"update-mode": "weights", "local-lr": 0.0, "partitioning": "iid", "batch-size": 50}
    replies = run_round(make_grid(4, config), arrays0, rnd=1)
    received = torch.cat(
        [torch.from_numpy(a.numpy()).reshape(-1).double() for a in arrays0.values()]
    )
    for reply in replies.values():  # lr 0: the weights come back unchanged
        assert torch.equal(reply_vector(reply), received)
        assert reply.content["metrics"]["num-examples"] == 1000  # 4000 training images / 4
    trained = run_round(make_grid(4, {**config, "local-lr": 0.1}), arrays0, rnd=1)
    model = models.build("mlp")
    from flwr_byz import data

    split = data.load_dataset("mnist5k", seed=3)
    model.load_state_dict(arrays0.to_torch_state_dict())
    before, _ = models.evaluate(model, split.test_x, split.test_y)
    model.load_state_dict(trained[1].content["arrays"].to_torch_state_dict())
    after, _ = models.evaluate(model, split.test_x, split.test_y)
    assert after < before


def test_evaluate_reports_test_accuracy(arrays0: ArrayRecord) -> None:
    grid = make_grid(1, {})
    content = RecordDict({"arrays": arrays0, "config": ConfigRecord({"server-round": 1})})
    (reply,) = grid.send_and_receive([Message(content, 1, MessageType.EVALUATE)])
    metrics = reply.content["metrics"]
    from flwr_byz import data

    split = data.load_dataset("mnist5k", seed=3)
    model = models.build("mlp")
    model.load_state_dict(arrays0.to_torch_state_dict())
    with torch.no_grad():
        predictions = model(split.test_x).argmax(dim=1)
    assert metrics["eval-accuracy"] == float((predictions == split.test_y).double().mean())
    assert metrics["num-examples"] == split.test_y.numel()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gradient_on_cuda_matches_reference(arrays0: ArrayRecord) -> None:
    reply = run_round(make_grid(1, {"client-device": "cuda"}), arrays0, rnd=2)[1]
    _close(reply_vector(reply), reference_gradient(arrays0, 3, 0, 2), rtol=1e-3)


@settings(max_examples=20, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4
    )
)
def test_records_flatten_round_trip(shapes) -> None:
    from flwr_byz.clients.records import flatten, record_to_state, vector_to_record

    state = {f"layer{i}": torch.randn(shape) for i, shape in enumerate(shapes)}
    vector = flatten(state)
    assert vector.numel() == sum(t.numel() for t in state.values())
    back = record_to_state(vector_to_record(vector, state))
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
