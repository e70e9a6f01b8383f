"""Flower's ``Array`` (``.npy`` bytes) to numpy and back, fast and byte-identical to Flower.

One codec for the strategies (``flwr_byz.strategy``) and the ClientApp
(``flwr_byz.clients.records``):
headers are parsed and built once per (dtype, shape) and cached; the data is viewed, not parsed.
Tested against Flower's own encoding in ``tests/strategy/test_strategy_decode.py``.
"""

from __future__ import annotations

import functools
import io
import math
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.constant import SType
from numpy.lib import format as npy_format

from flwr_byz.flower_internals import new_array

__all__ = ["array_to_numpy", "decode_arrayrecord", "npy_header", "numpy_to_array", "records_of"]

_NPY_MAGIC = b"\x93NUMPY"
_Record = TypeVar("_Record", ArrayRecord, MetricRecord, ConfigRecord)
_CACHED_HEADER_BYTES = 4096


@functools.lru_cache(maxsize=256)
def _parse_npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of one ``.npy`` header (magic included), memoised.

    Every round sends the same shapes, so numpy's header parse (an ``ast.literal_eval``) runs
    once per distinct header. Raises like numpy on a malformed header (exceptions aren't cached).
    """
    stream = io.BytesIO(header)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if stream.tell() != len(header):
        raise ValueError("malformed .npy header")
    if dtype.hasobject:
        raise ValueError("object arrays are refused (they would need unpickling)")
    return tuple(int(n) for n in shape), bool(fortran_order), dtype


def _npy_header_length(data: bytes) -> int:
    """Length of the ``.npy`` header (magic, version, length field and header text)."""
    if len(data) < 10 or data[:6] != _NPY_MAGIC:
        raise ValueError("the data is not in .npy format (bad magic string)")
    major = data[6]
    if major == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    if major in (2, 3):
        if len(data) < 12:
            raise ValueError("truncated .npy header")
        return 12 + int.from_bytes(data[8:12], "little")
    raise ValueError(f"unsupported .npy format version ({major}, {data[7]})")


def array_to_numpy(array: Array) -> np.ndarray:
    """A read-only numpy view of an ``Array``'s ``.npy`` bytes (no copy, unlike ``Array.numpy()``).

    Same safety as Flower's (never unpickles: object dtypes are refused); malformed bytes raise.
    The header parse is memoised by the header bytes (see ``_parse_npy_header``).
    """
    if array.stype != SType.NUMPY:
        raise TypeError(f"unsupported serialization type {array.stype!r}")
    data = array.data
    offset = _npy_header_length(data)
    if len(data) < offset:
        raise ValueError("truncated .npy header")
    header = bytes(data[:offset])
    # memoise ordinary headers only: a hostile reply's huge header must not stay cached
    parse = _parse_npy_header if offset <= _CACHED_HEADER_BYTES else _parse_npy_header.__wrapped__
    shape, fortran_order, dtype = parse(header)
    count = math.prod(shape)
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


@functools.lru_cache(maxsize=256)
def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of ``descr`` and ``shape``."""
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    stream = io.BytesIO()
    try:
        npy_format.write_array_header_1_0(stream, header)
    except ValueError:  # header longer than 65535 bytes: np.save falls back to version 2.0
        stream = io.BytesIO()
        npy_format.write_array_header_2_0(stream, header)
    return stream.getvalue()


def numpy_to_array(ndarray: np.ndarray) -> Array:
    """``Array(ndarray)`` (Flower's ``.npy`` encoding, same bytes as ``np.save``), faster.

    The header is built once per (dtype, shape); the data is one copy of the raw buffer. Arrays
    Flower would write in Fortran order, and structured or object dtypes, take Flower's path.
    """
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"expected a numpy ndarray, got {type(ndarray).__name__}")
    dtype = ndarray.dtype
    fortran = ndarray.flags.f_contiguous and not ndarray.flags.c_contiguous
    if fortran or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return Array.from_numpy_ndarray(ndarray)
    shape = tuple(int(n) for n in ndarray.shape)
    descr = npy_format.dtype_to_descr(dtype)
    assert isinstance(descr, str)  # structured dtypes took Flower's path above
    header = npy_header(descr, shape)
    body = np.ascontiguousarray(ndarray)
    data = b"".join((header, body.reshape(-1).view(np.uint8).data)) if body.size else header
    # the fields Array(dtype=..., shape=..., stype=..., data=...) sets, without its dispatch
    array = new_array(str(dtype), shape, SType.NUMPY, data)
    return array


def decode_arrayrecord(record: ArrayRecord) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Named numpy arrays of an ``ArrayRecord``, or ``(None, why)`` when one cannot be decoded."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in record.items():
        if not isinstance(value, Array):
            return None, f"entry {key!r} is a {type(value).__name__}, not an Array"
        try:
            arrays[key] = array_to_numpy(value)
        except Exception as err:  # any decoding failure excludes the reply
            return None, f"array {key!r} cannot be decoded: {type(err).__name__}: {err}"
    return arrays, None


def records_of(content: RecordDict, kind: type[_Record]) -> dict[str, _Record]:
    """The records of type ``kind`` in ``content``, by key, in its order: what RecordDict's
    ``array_records``, ``metric_records`` and ``config_records`` hold, as a plain dict. Those
    properties build a type-checked synced view on every access (7.8 us measured for a reply of
    two records, against 0.9 us here), and a round reads them for every reply."""
    return {key: record for key, record in content.items() if isinstance(record, kind)}
