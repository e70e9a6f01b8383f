"""Flat-vector views of the model in both record layouts (Message API and legacy NumPyClient).

Message API replies carry one ArrayRecord (FedAvg: "arrays") of typed ``Array``s; a legacy
``NumPyClient`` fit reply carries "fitres.parameters" (keys "0", "1", ..., ``.npy`` bytes with an
empty dtype) and its instructions "fitins.parameters". The vector is ``flwr_byz.layout``'s: the
floating-point arrays in the record's key order (integer buffers such as batch counters are left
as they are).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from torch import Tensor

from flwr_byz.layout import is_aggregated

LEGACY_INS, LEGACY_RES = "fitins.parameters", "fitres.parameters"


def find_arrays(content: RecordDict, legacy_key: str) -> tuple[str, ArrayRecord] | None:
    """The (key, record) holding the model: ``legacy_key``, "arrays" or the only ArrayRecord."""
    records = content.array_records
    for key in (legacy_key, "arrays"):
        if key in records:
            return key, records[key]
    plain = [key for key in records if not key.startswith("flwr-byz.")]
    return (plain[0], records[plain[0]]) if len(plain) == 1 else None


def to_numpy(array: Array) -> np.ndarray:
    """The array's values (legacy arrays have an empty dtype: decode their ``.npy`` bytes)."""
    return bytes_to_ndarray(array.data) if not array.dtype else array.numpy()


def to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``{key: ndarray}`` of the record."""
    return {key: to_numpy(array) for key, array in record.items()}


def flat(arrays: dict[str, np.ndarray], dtype: torch.dtype = torch.float64) -> Tensor:
    """The floating-point arrays concatenated in key order, as one ``(d,)`` tensor."""
    parts = [
        torch.from_numpy(np.ascontiguousarray(value).reshape(-1)).to(dtype)
        for value in arrays.values()
        if is_aggregated(value.dtype)
    ]
    if not parts:
        raise ValueError("byzantine_mod: the record holds no floating-point array")
    return torch.cat(parts)


def same_layout(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """True when both have the same keys, shapes and dtypes (then ``a - b`` is an update)."""
    return list(a) == list(b) and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a
    )


def rebuild(vector: Tensor, like: dict[str, np.ndarray], original: ArrayRecord) -> ArrayRecord:
    """A record with ``original``'s keys and encoding whose float arrays hold ``vector``."""
    out, start = ArrayRecord(), 0
    for key, value in like.items():
        if is_aggregated(value.dtype):
            stop = start + value.size
            piece = vector[start:stop].detach().cpu().numpy().astype(value.dtype)
            value = piece.reshape(value.shape)
            start = stop
        old = original[key]
        if old.dtype:  # Message API: a typed Array
            out[key] = Array(np.ascontiguousarray(value))
        else:  # legacy Parameters bytes
            out[key] = Array(data=ndarray_to_bytes(value), dtype="", stype=old.stype, shape=())
    if start != vector.numel():
        raise ValueError(f"byzantine_mod: vector of {vector.numel()} values, model has {start}")
    return out
