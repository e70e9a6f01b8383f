"""Hostile ``Array`` bytes in a reply (forged ``.npy`` headers, wrong serialisations, types the
model does not have) are excluded with a reason that names the array, before any allocation
their header claims; arrays that hold the right values in another valid layout are accepted."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from strategy_fakes import (
    INT_KEY,
    SHAPES,
    flat,
    from_record,
    honest_update,
    initial_arrays,
    to_record,
)

from flwr_byz.flower_internals import new_array
from flwr_byz.inprocess import InProcessGrid
from flwr_byz.strategy import Median

KEY = "layer.weight"


def _npy(values: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, values, allow_pickle=False)
    return stream.getvalue()


def _forged(data: bytes, shape: tuple[int, ...] = SHAPES[KEY], stype: str = "numpy.ndarray"):
    return new_array("float32", shape, stype, data)


def _hostile(kind: str, weight: np.ndarray) -> Array:
    good = _npy(weight)
    return {
        "not npy": lambda: _forged(b"hello world" * 10),
        "truncated": lambda: _forged(good[:-8]),
        "huge shape claimed": lambda: _forged(good.replace(b"(4, 3)", b"(4000000000000, 3)")),
        "object dtype": lambda: _forged(good.replace(b"'<f4'", b"'|O' ")),
        "malformed header": lambda: _forged(good.replace(b"'descr'", b"'dxscr'")),
        "other serialisation": lambda: _forged(good, stype="torch"),
        "empty data": lambda: _forged(b""),
        "big-endian": lambda: Array(weight.astype(">f4")),
        "complex": lambda: Array(weight.astype(np.complex64)),
        "bool": lambda: Array(weight > 0),
        "no rows": lambda: Array(np.zeros((0, 3), np.float32)),
        "fortran order": lambda: _forged(_npy(np.asfortranarray(weight))),
        "fields disagree with bytes": lambda: _forged(good, shape=(3, 4)),
    }[kind]()


REFUSED = {
    "not npy": "not in .npy format",
    "truncated": "buffer is smaller",
    "huge shape claimed": "buffer is smaller",
    "object dtype": "object arrays are refused",
    "malformed header": "cannot be decoded",
    "other serialisation": "unsupported serialization type",
    "empty data": "not in .npy format",
    "big-endian": "has dtype >f4, expected float32",
    "complex": "has dtype complex64, expected float32",
    "bool": "has dtype bool, expected float32",
    "no rows": "has shape (0, 3), expected (4, 3)",
}
ACCEPTED = ("fortran order", "fields disagree with bytes")  # the .npy bytes hold the right values


def _client_app(kind: str) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        start = from_record(message.content["arrays"])
        rnd = int(message.content["config"]["server-round"])
        update = honest_update(context.node_id, rnd)
        out = {k: (start[k] + update[k]).astype(np.float32) for k in SHAPES}
        out[INT_KEY] = np.array(int(start[INT_KEY]) + 1, dtype=np.int64)
        arrays = to_record(out)
        if context.node_config["role"] == "hostile":
            arrays = ArrayRecord({**dict(arrays.items()), KEY: _hostile(kind, out[KEY])})
        metrics = MetricRecord({"train-loss": 1.0, "num-examples": 10})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)

    return app


def _round(kind: str):
    roles = ["honest"] * 6 + ["hostile"]
    strategy = Median(
        num_byzantine=1, fraction_evaluate=0.0, min_train_nodes=7, min_available_nodes=7
    )
    grid = InProcessGrid(_client_app(kind), [{"role": role} for role in roles])
    start = initial_arrays()
    result = strategy.start(grid, to_record(start), num_rounds=1)
    return strategy.last_round_report, start, flat(from_record(result.arrays))


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_hostile_array_is_excluded_and_the_round_uses_the_others(kind: str) -> None:
    report, start, model = _round(kind)
    assert not report.kept_model
    assert [node for node, _ in report.excluded] == [7]
    reason = report.excluded_reasons[7]
    assert REFUSED[kind] in reason and repr(KEY) in reason, reason
    deltas = np.stack([flat(honest_update(node, 1)) for node in range(1, 7)])
    expected = flat(start) + np.median(deltas, axis=0)
    np.testing.assert_allclose(model, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ACCEPTED)
def test_array_in_another_valid_layout_is_accepted(kind: str) -> None:
    report, start, model = _round(kind)
    assert report.excluded == [] and sorted(report.accepted_node_ids) == list(range(1, 8))
    deltas = np.stack([flat(honest_update(node, 1)) for node in range(1, 8)])
    expected = flat(start) + np.median(deltas, axis=0)
    np.testing.assert_allclose(model, expected, rtol=1e-5, atol=1e-5)
