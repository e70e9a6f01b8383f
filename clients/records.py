"""Conversions between Flower's ``ArrayRecord`` and one flat torch vector (the attacks' view).

Aggregation and attacks treat the model as one flat vector; replies must carry the model's keys,
shapes and dtypes. The flat order is the record's key order.

Decoding and encoding go through ``flwr_byz.strategy.message_api``'s ``array_to_numpy`` and
``numpy_to_array`` (Flower's ``.npy`` format, headers memoised per dtype and shape): the same
arrays and bytes as ``Array.numpy()`` / ``Array(ndarray)``, without re-parsing every header.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import Tensor

from flwr_byz.strategy.message_api import array_to_numpy, numpy_to_array


def record_to_state(arrays: ArrayRecord) -> dict[str, Tensor]:
    """The record as a ``{key: tensor}`` dict (CPU tensors, copies)."""
    return {key: torch.from_numpy(np.array(array_to_numpy(array))) for key, array in arrays.items()}


def flatten(state: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """Concatenate the tensors of ``state`` (key order) into one ``(d,)`` vector of ``dtype``."""
    if not state:
        raise ValueError("cannot flatten an empty model state")
    return torch.cat([value.detach().reshape(-1).to(dtype) for value in state.values()])


def _check_length(vector: Tensor, like: dict[str, Tensor]) -> None:
    total = sum(value.numel() for value in like.values())
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(
            f"vector of shape {tuple(vector.shape)} does not match the model's {total} values"
        )


def unflatten(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Split ``vector`` back into ``like``'s keys, shapes and dtypes (CPU)."""
    _check_length(vector, like)
    out, start = {}, 0
    for key, value in like.items():
        stop = start + value.numel()
        out[key] = vector[start:stop].detach().to("cpu", value.dtype).reshape(value.shape).clone()
        start = stop
    return out


def vector_to_record(vector: Tensor, like: dict[str, Tensor]) -> ArrayRecord:
    """``vector`` as an ``ArrayRecord`` with ``like``'s keys, shapes and dtypes."""
    _check_length(vector, like)
    flat = vector.detach().to("cpu")
    record, start = ArrayRecord(), 0
    for key, value in like.items():
        stop = start + value.numel()
        piece = flat[start:stop].to(value.dtype).reshape(value.shape)
        record[key] = numpy_to_array(piece.numpy())  # the encoder copies the bytes
        start = stop
    return record
