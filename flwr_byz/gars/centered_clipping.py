"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021), ALGORITHMS.md "Beyond the seeds".

``v_0`` = the previous round's output (``center``; None -> 0, also after a layout change), then
L times ``v <- v + (1/n) sum_i (V_i - v) min(1, tau / ||V_i - v||)``. The state is explicit: the
caller passes the previous aggregate in and keeps the returned one, so a strategy can checkpoint it.

Choices beyond ALGORITHMS.md: rows with a NaN/inf (at most f) contribute nothing (their clipping
weight is 0, as an infinitely far row's would be); norms are taken in float64. ``participation``
is each input's share of the total weight it received over the L steps (the part of the output
that came from ``v_0`` is not an input's and is left out before normalising).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_inputs, finite_rows, require
from ._types import Aggregation


def _centered_clipping_impl(
    vectors: Tensor,
    f: int,
    tau: float = 100.0,
    L: int = 1,  # noqa: N803 - the paper's name
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
        v = center.reshape(-1).to(device=vectors.device, dtype=torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise ValueError("centered_clipping: center contains NaN or inf")
    rows = torch.where(finite[:, None], vectors, torch.zeros_like(vectors)).to(torch.float64)
    share = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    for _ in range(L):
        diff = rows - v
        norms = torch.linalg.vector_norm(diff, dim=1)
        weight = torch.where(
            norms > tau, tau / norms.clamp_min(1e-300), torch.ones_like(norms)
        ) * finite.to(torch.float64)
        v = v + (weight[:, None] * diff).sum(dim=0) / n
        share = share * (1.0 - weight.sum() / n) + weight / n
    share = share.cpu()
    total = share.sum()
    participation = share / total if total > 0 else finite.cpu().to(torch.float64) / finite.sum()
    return Aggregation(v.to(vectors.dtype), None, participation)


def centered_clipping(
    vectors: Tensor,
    f: int,
    tau: float = 100.0,
    L: int = 1,  # noqa: N803 - the paper's name
    center: Tensor | None = None,
) -> Tensor:
    """Centered clipping around ``center`` (the previous output; None = 0); keep the result."""
    return _centered_clipping_impl(vectors, f, tau, L, center).vector
