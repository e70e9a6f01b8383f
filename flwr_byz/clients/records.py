"""Conversions between Flower's ``ArrayRecord`` and one flat torch vector (the attacks' view).

Aggregation and attacks treat the model as one flat vector; replies must carry the model's keys,
shapes and dtypes. The vector is ``flwr_byz.layout``'s, the server's too: the floating arrays in
the record's key order.

Decoding and encoding go through ``flwr_byz.codec``'s ``array_to_numpy`` and
``numpy_to_array`` (Flower's ``.npy`` format, headers memoised per dtype and shape): the same
arrays and bytes as ``Array.numpy()`` / ``Array(ndarray)``, without re-parsing every header.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType
from numpy.lib import format as npy_format
from torch import Tensor

from flwr_byz.codec import array_to_numpy, npy_header, numpy_to_array
from flwr_byz.flower_internals import fill_record, new_array
from flwr_byz.layout import flatten_state, is_aggregated, state_dim, unflatten_state

SOURCE_ATTR = "_flwr_byz_source"  # tag on a decoded tensor: (the Array's bytes, its version)


def record_to_state(arrays: ArrayRecord) -> dict[str, Tensor]:
    """The record as a ``{key: tensor}`` dict (CPU tensors, copies).

    Each tensor is tagged (``SOURCE_ATTR``) with the ``bytes`` it was decoded from and its version
    counter, so that ``flwr_byz.clients.runtime.model_with_state`` can skip copying values the
    model already
    holds (every node of a round receives the same bytes)."""
    state = {}
    for key, array in arrays.items():
        tensor = torch.from_numpy(np.array(array_to_numpy(array)))
        if isinstance(array.data, bytes):
            setattr(tensor, SOURCE_ATTR, (array.data, tensor._version))
        state[key] = tensor
    return state


def flatten(state: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """The state's flat vector (``flwr_byz.layout``: its floating tensors in key order)."""
    return flatten_state(state, dtype)


def unflatten(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """``like``'s keys, shapes and dtypes (CPU) from the flat ``vector`` (``flwr_byz.layout``)."""
    return unflatten_state(vector, like)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of ``dtype`` and ``shape``."""
    descr = npy_format.dtype_to_descr(dtype)
    assert isinstance(descr, str)  # plain dtypes only (_plain_dtype): never a structured descr
    return npy_header(descr, shape)


def _encode(values: np.ndarray) -> Array:
    """``Array(values)`` for a C-contiguous plain-dtype array: same fields and bytes, one copy."""
    shape = values.shape
    header = _npy_header(values.dtype, shape)
    data = b"".join((header, values.data)) if values.size else header
    return new_array(str(values.dtype), shape, SType.NUMPY, data)


def _plain_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32)


def vector_to_record(vector: Tensor, like: dict[str, Tensor]) -> ArrayRecord:
    """``vector`` as an ``ArrayRecord`` with ``like``'s keys, shapes and dtypes (the layout of
    ``flwr_byz.layout``: the floating arrays from the vector, the others from ``like``).

    Same bytes as encoding each piece with ``Array(ndarray)``. When the vector already has every
    key's dtype (the usual float32 model), the pieces are numpy views of one CPU buffer, each
    encoded with one copy from a memoised header, and the record is filled without Flower's
    per-item type checks (the keys are the model's ``str`` keys, the values ``Array``)."""
    dim = state_dim(like)
    if vector.dim() != 1 or vector.numel() != dim:
        raise ValueError(
            f"vector of shape {tuple(vector.shape)} does not match the model's {dim} values"
        )
    flat = vector.detach().to("cpu")
    record, start = ArrayRecord(), 0
    if _plain_dtype(flat.dtype) and all(value.dtype == flat.dtype for value in like.values()):
        values = flat.contiguous().numpy()
        items = {}
        for key, value in like.items():
            stop = start + value.numel()
            items[str(key)] = _encode(values[start:stop].reshape(tuple(value.shape)))
            start = stop
        fill_record(record, items.items())
        record.is_dirty = True
        return record
    for key, value in like.items():
        if not is_aggregated(value.dtype):
            record[key] = numpy_to_array(value.detach().to("cpu").numpy())
            continue
        stop = start + value.numel()
        piece = flat[start:stop].to(value.dtype).reshape(value.shape)
        record[key] = numpy_to_array(piece.numpy())  # the encoder copies the bytes
        start = stop
    return record
