"""array_to_numpy / numpy_to_array: Flower's .npy codec, faster; malformed bytes refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from flwr_byz.codec import array_to_numpy, decode_arrayrecord, numpy_to_array, records_of

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


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), max_size=4).map(tuple),
    dtype=st.sampled_from([*DTYPES, "<c8", "<u2", "|i1"]),
    layout=st.sampled_from(["C", "F", "strided"]),
    seed=st.integers(0, 1000),
)
def test_encoder_matches_flowers_encoder(shape, dtype, layout, seed) -> None:
    values = np.asarray(np.random.default_rng(seed).standard_normal(shape) * 50).astype(dtype)
    if layout == "F":
        values = np.asfortranarray(values)
    elif layout == "strided":
        values = np.repeat(values, 2, axis=-1)[..., ::2] if values.ndim else values
    ours, theirs = numpy_to_array(values), Array(values)
    assert (ours.dtype, ours.shape, ours.stype) == (theirs.dtype, theirs.shape, theirs.stype)
    assert ours.data == theirs.data  # the same bytes as np.save
    for decoded in (ours.numpy(), array_to_numpy(ours)):  # Flower's decoder and ours
        assert decoded.dtype == values.dtype and decoded.shape == values.shape
        np.testing.assert_array_equal(decoded, values)


def test_cached_header_does_not_hide_malformed_data() -> None:
    good = numpy_to_array(np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(array_to_numpy(good), np.arange(6, dtype=np.float32))
    short = Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=good.data[:-4])
    with pytest.raises(ValueError):
        array_to_numpy(short)  # same (cached) header, too few bytes
    with pytest.raises(ValueError):
        array_to_numpy(Array(dtype="float32", shape=(6,), stype="numpy.ndarray", data=b"\x93NU"))
    pickled = np.array([1, "a"], dtype=object)
    header = good.data[: len(good.data) - 24].replace(b"'<f4'", b"'|O' ")
    with pytest.raises(ValueError):
        array_to_numpy(Array(dtype="object", shape=(2,), stype="numpy.ndarray", data=header))
    with pytest.raises(TypeError):
        numpy_to_array([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow_pickle"):
        numpy_to_array(pickled)  # Flower's path, and its refusal


def test_records_of_matches_flowers_typed_views() -> None:
    """records_of(content, kind) holds what RecordDict's typed properties hold, in order."""
    arrays = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    content = RecordDict(
        {
            "m2": MetricRecord({"b": 2.0}),
            "arrays": arrays,
            "config": ConfigRecord({"x": "y"}),
            "m1": MetricRecord({"a": 1}),
            "more": ArrayRecord(),
        }
    )
    views = {
        ArrayRecord: content.array_records,
        MetricRecord: content.metric_records,
        ConfigRecord: content.config_records,
    }
    for kind, view in views.items():
        found = records_of(content, kind)
        assert list(found) == list(view)
        assert all(found[key] is view[key] for key in view)
    assert list(records_of(content, MetricRecord)) == ["m2", "m1"]
    assert records_of(RecordDict(), ArrayRecord) == {}
