"""Exact power-of-two rescaling for float64 values so large that their squares overflow.

Finite float64 vectors with values above ~1e154 (a Byzantine reply can hold them: they pass every
finiteness screen) overflow squared norms, Gram matrices and eigen-decompositions to inf or NaN.
The rules whose decision or output is invariant under a common positive scale (DnC's filter, the
geometric median, FLTrust's cosines) then work on ``rows * 2**-k``: multiplying by a power of two
is exact except where values underflow, so inputs that need no scaling are untouched bit for bit,
and scaled ones lose only the digits that float64 could not have kept next to the huge values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Largest binary exponent kept: values up to 2**400 have squares up to 2**800, and sums of up to
#: 2**200 such squares (n * d values) stay below float64's 2**1024.
_HEADROOM = 400


def downscale(peak: float, headroom: int = _HEADROOM) -> float:
    """``2**-k``, the smallest downscaling (k >= 0) that brings ``peak`` (a finite maximum of
    absolute values) to at most ``2**headroom``; 1.0 when no scaling is needed."""
    if not math.isfinite(peak) or peak <= 0.0:
        return 1.0
    exponent = math.frexp(peak)[1]  # peak < 2**exponent
    return math.ldexp(1.0, headroom - exponent) if exponent > headroom else 1.0


def downscales(peaks: Tensor, headroom: int = _HEADROOM) -> Tensor:
    """:func:`downscale` of each finite entry of ``peaks``, as a float64 tensor."""
    peaks = peaks.to(torch.float64)
    exponents = torch.frexp(peaks).exponent.to(torch.float64)
    return torch.where(
        exponents > headroom, torch.exp2(headroom - exponents), torch.ones_like(peaks)
    )
