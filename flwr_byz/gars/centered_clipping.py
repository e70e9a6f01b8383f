"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021), ALGORITHMS.md "Beyond the seeds".

``v_0`` = the previous round's output (``center``; None -> 0, also after a layout change), then
L times ``v <- v + (1/n) sum_i (V_i - v) min(1, tau / ||V_i - v||)``. The state is explicit: the
caller passes the previous aggregate in and keeps the returned one, so a strategy can checkpoint it.

Choices beyond ALGORITHMS.md: rows with a NaN/inf (at most f) contribute nothing (their clipping
weight is 0, as an infinitely far row's would be); norms are taken in float64. ``participation``
is each input's share of the total weight it received over the L steps (the part of the output
that came from ``v_0`` is not an input's and is left out before normalising).

Computation: one column block of ``_BLOCK_ELEMENTS`` values at a time (no ``(n, d)`` copy), L + 1
passes over the input (the norms for step l + 1 are taken in the pass that moves the centre at
step l). Norms and the running centre are float64. For float32/16 input the differences
``V_i - v`` and the weighted sums over the n rows are in the input dtype (the centre rounded to
it: errors of the order of the output's own rounding); for float64 input, or when a weight is
below 1e-30 (a row beyond ~1e30: float32 weights would lose digits), they are float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flwr_byz._finite import all_finite

from ._checks import check_inputs, finite_rows, require
from ._scaling import downscales
from ._types import Aggregation

_BLOCK_ELEMENTS = 1 << 18  # elements per column block (x n rows): bounds temporaries
_FAST = True  # False: always the float64 path (the tests compare both)


def _block_columns(n: int, d: int) -> int:
    """Columns per block: ``_BLOCK_ELEMENTS / n`` (at least 64), at most d."""
    return min(d, max(64, _BLOCK_ELEMENTS // n))


def _centered_clipping_impl(
    vectors: Tensor,
    f: int,
    tau: float = 100.0,
    L: int = 1,  # the paper's name
    center: Tensor | None = None,
) -> Aggregation:
    n, d, f = check_inputs("centered_clipping", vectors, f)
    require("centered_clipping", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    tau = float(tau)
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"centered_clipping: tau must be positive and finite, got {tau}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"centered_clipping: L must be an int >= 1, got {L!r}")
    finite = finite_rows("centered_clipping", vectors, f)
    if center is None:
        v = torch.zeros(d, dtype=torch.float64, device=vectors.device)
    else:
        if not isinstance(center, Tensor) or center.reshape(-1).shape[0] != d:
            shape = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
            raise ValueError(f"centered_clipping: center must have {d} values, got {shape}")
        v = center.reshape(-1).to(device=vectors.device, dtype=torch.float64, copy=True)
        if not all_finite(v):
            raise ValueError("centered_clipping: center contains NaN or inf")
    share = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    mask = finite.to(torch.float64)
    width = _block_columns(n, d)
    blocks = [(start, min(start + width, d)) for start in range(0, d, width)]
    zero_bad = not bool(finite.all())

    # float32/16 input: differences in the input dtype (the centre rounded to it) with float64
    # norms, and float32 weighted sums added to the float64 centre; float64 input, or weights
    # too small for float32 (rows beyond ~1e30), take the float64 path.
    fast = vectors.dtype in (torch.float32, torch.float16, torch.bfloat16) and _FAST

    def block(start: int, stop: int, low: bool) -> Tensor:
        part = vectors[:, start:stop]
        if low:
            part = part - v[start:stop].to(vectors.dtype)
        else:
            part = part.to(torch.float64) - v[start:stop]  # (n, width) float64, never (n, d)
        return torch.where(finite[:, None], part, 0.0) if zero_bad else part

    def norms2(diff: Tensor) -> Tensor:
        return torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64).square()

    def norms_of(squares: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(sqrt(squares), None)``; when a finite row's float64 square overflowed (values
        above ~1e154), ``(norms, scales)``: the norms of the differences times ``scales`` (powers
        of two, 1 for the other rows; exact), always finite, so that such a row still moves the
        centre by tau in its direction, as the rule says, even where its norm exceeds float64."""
        norms = squares.sqrt()
        over = torch.isinf(squares) & finite
        if not bool(over.any()):
            return norms, None
        rows = torch.nonzero(over, as_tuple=True)[0]
        peaks = torch.zeros(rows.numel(), dtype=torch.float64, device=vectors.device)
        for start, stop in blocks:
            peaks = torch.maximum(peaks, block(start, stop, False)[rows].abs().amax(dim=1))
        scales = torch.ones(n, dtype=torch.float64, device=vectors.device)
        scales[rows] = downscales(peaks, headroom=0)
        scaled = torch.zeros_like(peaks)
        for start, stop in blocks:
            scaled += norms2(block(start, stop, False)[rows] * scales[rows, None])
        norms[rows] = scaled.sqrt()
        return norms, scales

    squares = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    for start, stop in blocks:  # ||V_i - v_0||^2
        squares += norms2(block(start, stop, fast))
    for step in range(L):
        norms, scales = norms_of(squares)
        # the weight on the (scaled) difference; a scaled row's norm is above tau / scale
        clipped = norms > (tau if scales is None else tau * scales)
        unclipped = 1.0 if scales is None else 1.0 / scales
        moved = torch.where(clipped, tau / norms.clamp_min(1e-300), unclipped) * mask
        weight = moved if scales is None else moved * scales  # on the unscaled difference
        share = share * (1.0 - weight.sum() / n) + weight / n
        last = step == L - 1
        positive = weight[weight > 0]
        low = fast and scales is None
        low = low and (positive.numel() == 0 or float(positive.min()) >= 1e-30)
        w = weight.to(vectors.dtype) if low else moved
        squares = torch.zeros_like(squares)
        for start, stop in blocks:  # v += (1/n) sum_i w_i (V_i - v), then the next norms
            diff = block(start, stop, low)
            if scales is not None:
                diff = diff * scales[:, None]
            v[start:stop] += (w @ diff).to(torch.float64) / n
            if not last:
                squares += norms2(block(start, stop, fast))  # against the moved centre
    share = share.cpu()
    total = share.sum()
    participation = share / total if total > 0 else finite.cpu().to(torch.float64) / finite.sum()
    return Aggregation(v.to(vectors.dtype), None, participation)


def centered_clipping(
    vectors: Tensor,
    f: int,
    tau: float = 100.0,
    L: int = 1,  # the paper's name
    center: Tensor | None = None,
) -> Tensor:
    """Centered clipping around ``center`` (the previous output; None = 0); keep the result."""
    return _centered_clipping_impl(vectors, f, tau, L, center).vector
