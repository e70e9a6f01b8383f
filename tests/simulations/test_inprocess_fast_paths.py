"""The in-process engine's fast paths change no bit: same records, same models, same runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Array, ArrayRecord

import flwr_byz.clients.runtime as runtime
from flwr_byz import models
from flwr_byz.clients import records
from flwr_byz.schema import ClientConfig, RunConfig
from flwr_byz.simulations import engines
from flwr_byz.simulations.results import RunStore


def _reference_vector_to_record(vector: torch.Tensor, like: dict[str, Any]) -> ArrayRecord:
    """Flower's own encoding, piece by piece (what the fast path must reproduce)."""
    record, start = ArrayRecord(), 0
    for key, value in like.items():
        stop = start + value.numel()
        piece = vector.detach()[start:stop].to(value.dtype).reshape(value.shape)
        record[key] = Array(piece.contiguous().numpy())
        start = stop
    return record


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("shapes", [[(3, 4), (4,), ()], [(0,), (2, 0), (5,)], [(10, 7), (10,)]])
def test_vector_to_record_is_byte_identical_to_flower(dtype, shapes) -> None:
    like = {f"layer{i}.weight": torch.zeros(shape, dtype=dtype) for i, shape in enumerate(shapes)}
    total = sum(value.numel() for value in like.values())
    vector = (torch.randn(total) * 100).to(dtype)
    fast, reference = (
        records.vector_to_record(vector, like),
        _reference_vector_to_record(vector, like),
    )
    assert list(fast) == list(reference)
    for key in like:
        a, b = fast[key], reference[key]
        assert (a.dtype, a.shape, a.stype) == (b.dtype, b.shape, b.stype)
        assert a.data == b.data
    fast["extra"] = reference[next(iter(like))]  # still an ordinary, editable ArrayRecord
    assert fast.is_dirty and len(fast) == len(like) + 1


def test_vector_to_record_keeps_integer_buffers_from_the_model() -> None:
    """Integer buffers (BatchNorm's ``num_batches_tracked``) are not in the vector: they keep
    the model's values, and the floating arrays around them take the vector's in order."""
    like = {
        "bn.weight": torch.zeros(3),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "fc.weight": torch.zeros(2, 2),
    }
    vector = torch.arange(7, dtype=torch.float32)
    record = records.vector_to_record(vector, like)
    assert list(record) == list(like)
    assert record["bn.num_batches_tracked"].numpy().item() == 7
    assert record["bn.num_batches_tracked"].dtype == "int64"
    assert record["bn.weight"].numpy().tolist() == [0.0, 1.0, 2.0]
    assert record["fc.weight"].numpy().tolist() == [[3.0, 4.0], [5.0, 6.0]]
    with pytest.raises(ValueError, match="7 values"):
        records.vector_to_record(torch.zeros(8), like)


def _cfg() -> ClientConfig:
    return ClientConfig.from_configs({"seed": 1}, {"partition-id": 0, "num-partitions": 3})


def test_model_with_state_reloads_after_any_in_place_change() -> None:
    cfg, device = _cfg(), torch.device("cpu")
    build = models.build("mlp", seed=4)
    one = records.vector_to_record(records.flatten(build.state_dict()), build.state_dict())
    state = records.record_to_state(one)
    model = runtime.model_with_state(cfg, state, device)
    expected = {key: value.clone() for key, value in model.state_dict().items()}

    def holds(values: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(model.state_dict()[k], v) for k, v in values.items())

    assert holds(expected)
    # the model is trained in place (local SGD): the next node must get the received values back
    torch.optim.SGD(model.parameters(), lr=1.0).zero_grad()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    assert not holds(expected)
    runtime.model_with_state(cfg, records.record_to_state(one), device)
    assert holds(expected)
    # a decoded state changed in place after decoding is copied, not taken from the cache
    edited = records.record_to_state(one)
    first = next(iter(edited))
    edited[first].mul_(2.0)
    runtime.model_with_state(cfg, edited, device)
    assert torch.equal(model.state_dict()[first], expected[first] * 2.0)
    runtime.model_with_state(cfg, records.record_to_state(one), device)
    assert holds(expected)
    # plain tensors (not decoded from a record) are always copied
    plain = {key: value.clone() + 3.0 for key, value in expected.items()}
    runtime.model_with_state(cfg, plain, device)
    assert holds(plain)


CONFIGS: dict[str, dict[str, Any]] = {
    "average": {"num_clients": 5, "rule": "average", "attack": "none"},
    "weights-median": {"num_clients": 4, "rule": "median", "update_mode": "weights"},
    "worker-momentum-krum": {
        "num_clients": 5,
        "rule": "krum",
        "num_byzantine": 1,
        "attack": "sign_flip",
        "momentum": 0.9,
    },
}


def _run(tmp_path: Path, name: str, tag: str) -> tuple[dict[str, torch.Tensor], list[Any]]:
    cfg = RunConfig(
        results_dir=str(tmp_path / tag),
        run_name=f"fast/{name}",
        seed=3,
        batch_size=16,
        learning_rate=0.2,
        num_rounds=3 if name != "weights-median" else 2,
        **CONFIGS[name],
    )
    record = engines.run(cfg, "inprocess")
    arrays = RunStore(cfg.run_dir).load_checkpoint().arrays
    return arrays, [row.get("test-loss") for row in record.rounds]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_inprocess_runs_are_bit_identical_without_the_fast_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    fast_arrays, fast_losses = _run(tmp_path, name, "fast")
    # the reference: Flower's encoding, and every received state copied into the model
    monkeypatch.setattr(records, "vector_to_record", _reference_vector_to_record)
    monkeypatch.setattr("flwr_byz.clients.app.vector_to_record", _reference_vector_to_record)
    monkeypatch.setattr(runtime, "_source", lambda value: None)
    slow_arrays, slow_losses = _run(tmp_path, name, "slow")
    assert fast_losses == slow_losses
    assert list(fast_arrays) == list(slow_arrays)
    for key, value in fast_arrays.items():
        assert torch.equal(value, slow_arrays[key]), key
