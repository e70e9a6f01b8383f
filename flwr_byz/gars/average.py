"""Arithmetic mean: the non-robust reference rule."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_inputs
from ._types import Aggregation


def _average_impl(vectors: Tensor, f: int) -> Aggregation:
    n, _, f = check_inputs("average", vectors, f)
    # A matrix-vector product: a strided column sum is several times slower on CPU.
    value = torch.full((n,), 1.0 / n, dtype=vectors.dtype, device=vectors.device) @ vectors
    return Aggregation(value, None, torch.full((n,), 1.0 / n, dtype=torch.float64))


def average(vectors: Tensor, f: int = 0) -> Tensor:
    """Arithmetic mean of the rows (f is accepted for a uniform signature and ignored)."""
    return _average_impl(vectors, f).vector
