"""array_to_numpy: zero-copy decoding equals Flower's Array.numpy(); malformed bytes refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz.strategy.message_api import array_to_numpy, decode_arrayrecord

DTYPES = ["<f4", ">f4", "<f8", "<f2", "<i8", ">i4", "|b1", "|u1"]


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), max_size=3).map(tuple),
    dtype=st.sampled_from(DTYPES),
    fortran=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_matches_flowers_decoder(shape, dtype, fortran, seed) -> None:
    values = np.random.default_rng(seed).standard_normal(shape) * 50
    array = np.asarray(values.astype(dtype), order="F" if fortran else "C")
    encoded = Array(array)
    ours, theirs = array_to_numpy(encoded), encoded.numpy()
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_malformed_arrays_are_refused_and_reported() -> None:
    with pytest.raises(ValueError):
        array_to_numpy(Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"junk"))
    truncated = Array(np.zeros(100, np.float32))
    short = Array(dtype="float32", shape=(100,), stype="numpy.ndarray", data=truncated.data[:-8])
    with pytest.raises(ValueError):
        array_to_numpy(short)
    with pytest.raises(TypeError, match="serialization type"):
        array_to_numpy(Array(dtype="float32", shape=(1,), stype="torch", data=b"x"))
    arrays, problem = decode_arrayrecord(ArrayRecord({"w": short}))
    assert arrays is None and "cannot be decoded" in problem
