"""ModelLayout: named arrays <-> flat vector round trip, and the reply checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz.strategy import ModelLayout

DTYPES = [np.float16, np.float32, np.float64, np.int64, np.int32, np.bool_]

W = np.zeros((2, 3), np.float32)
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
models = st.lists(st.tuples(shapes, st.sampled_from(DTYPES)), min_size=1, max_size=5)


def _build(spec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"a{i}": np.asarray((rng.standard_normal(shape) * 10).astype(dtype))
        for i, (shape, dtype) in enumerate(spec)
    }


@settings(max_examples=40, deadline=None)
@given(spec=models, seed=st.integers(0, 1000))
def test_flatten_unflatten_round_trip_keeps_keys_shapes_dtypes(spec, seed) -> None:
    arrays = _build(spec, seed)
    layout = ModelLayout(arrays)
    floats = [v for v in arrays.values() if np.issubdtype(v.dtype, np.floating)]
    assert layout.dim == sum(v.size for v in floats)
    expected_dtype = torch.float64 if any(v.dtype == np.float64 for v in floats) else torch.float32
    assert layout.dtype == expected_dtype
    vector = layout.flatten(arrays)
    reference = np.concatenate([v.ravel().astype(np.float64) for v in floats] or [np.zeros(0)])
    np.testing.assert_array_equal(vector.numpy().astype(np.float64), reference)

    other = {k: np.zeros_like(v) for k, v in arrays.items()}  # base for the non-float arrays
    back = layout.unflatten(vector, other)
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_array_equal(back[key], value)
        else:
            np.testing.assert_array_equal(back[key], other[key])


def test_stack_rows_are_the_flattened_models() -> None:
    base = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3)}
    layout = ModelLayout(base)
    models = [{"w": base["w"] * k, "n": base["n"]} for k in range(4)]
    stacked = layout.stack(models)
    assert stacked.shape == (4, 6)
    for k in range(4):
        np.testing.assert_array_equal(stacked[k].numpy(), (base["w"] * k).ravel())


def test_read_only_and_big_endian_arrays_are_packed() -> None:
    w = np.arange(4, dtype=np.float32)
    layout = ModelLayout({"w": w})
    readonly = w.copy()
    readonly.flags.writeable = False
    np.testing.assert_array_equal(layout.flatten({"w": readonly}).numpy(), w)
    big_endian = w.astype(">f4")
    wide = ModelLayout({"w": big_endian})  # a big-endian model packs too
    np.testing.assert_array_equal(wide.flatten({"w": big_endian}).numpy(), w)
    assert "dtype" in layout.check({"w": big_endian})  # but it is not the model's dtype


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"w": W}, "missing keys ['n']"),
        (
            {"w": np.zeros((2, 3), np.float32), "n": np.array(1), "x": np.zeros(1)},
            "unexpected keys ['x']",
        ),
        (
            {"w": np.zeros((3, 2), np.float32), "n": np.array(1)},
            "has shape (3, 2), expected (2, 3)",
        ),
        (
            {"w": np.zeros((2, 3), np.float64), "n": np.array(1)},
            "has dtype float64, expected float32",
        ),
        ({"w": [[0.0] * 3] * 2, "n": np.array(1)}, "is a list, not an ndarray"),
        ({"w": W, "n": np.array(1.0)}, "'n' has dtype float64"),
    ],
)
def test_check_names_what_is_wrong(arrays, reason: str) -> None:
    layout = ModelLayout({"w": np.zeros((2, 3), np.float32), "n": np.array(0)})
    problem = layout.check(arrays)
    assert problem is not None and reason in problem
    assert layout.check({"w": np.ones((2, 3), np.float32), "n": np.array(5)}) is None


def test_unflatten_refuses_a_wrong_length() -> None:
    layout = ModelLayout({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        layout.unflatten(torch.zeros(4), {"w": np.zeros(3, np.float32)})


def test_stack_fills_a_reusable_buffer_and_checks_it() -> None:
    base = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    layout = ModelLayout(base)
    buffer = np.full((5, 6), np.nan, np.float32)
    stacked = layout.stack([base, base], buffer=buffer)
    assert stacked.shape == (2, 6) and np.shares_memory(stacked.numpy(), buffer)
    np.testing.assert_array_equal(buffer[:2], np.stack([base["w"].ravel()] * 2))
    with pytest.raises(ValueError, match="rows"):
        layout.stack([base] * 6, buffer=buffer)
    with pytest.raises(ValueError, match="buffer must be"):
        layout.stack([base], buffer=np.zeros((2, 6), np.float64))
