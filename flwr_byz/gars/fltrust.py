"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021), ALGORITHMS.md "Beyond the seeds".

``TS_i = max(0, cos(V_i, g_0))`` with ``g_0`` the server's own update on its root data; output
``sum_i TS_i ||g_0|| / ||V_i|| V_i / sum_i TS_i``. The server update is an argument: the kernel
stays pure, the strategy computes ``g_0`` from the global model.

Choices beyond ALGORITHMS.md: a row with a NaN/inf or zero norm gets trust 0 (its cosine is
undefined). When every trust score is 0 the kernel raises ``NoTrustError`` (a ``ValueError``), so a
strategy keeps the model and reports why. f plays no part (accepted for the uniform signature).
Everything is float64, in column blocks (no ``(n, d)`` float64 copy): one pass for the norms and
the dot products with ``g_0``, one for the weighted sum (and, for rows whose float64 squares
overflow, two more on those rows scaled exactly by a power of two).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from flwr_byz._finite import all_finite

from ._checks import check_inputs, finite_mask
from ._scaling import downscales
from ._types import Aggregation


class NoTrustError(ValueError):
    """Every input has trust score 0: there is nothing to aggregate (keep the model)."""


_BLOCK_ELEMENTS = 1 << 18  # elements per float64 column block (x n rows): bounds temporaries


def _blocks(
    vectors: Tensor, finite: Tensor, scales: Tensor | None = None
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield (start, stop, float64 block with non-finite rows zeroed, rows times ``scales``),
    never (n, d) float64."""
    n, d = vectors.shape
    width = min(d, max(64, _BLOCK_ELEMENTS // n))
    zero_bad = not bool(finite.all())
    for start in range(0, d, width):
        part = vectors[:, start : start + width].to(torch.float64)
        if zero_bad:
            part = torch.where(finite[:, None], part, 0.0)
        if scales is not None:
            part = part * scales[:, None]
        yield start, start + part.shape[1], part


def _norms_and_dots(
    vectors: Tensor, g0: Tensor, finite: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Float64 ``(||V_i||, <V_i, g0>)`` of the rows (non-finite rows as 0), one pass in blocks,
    and the rows' scales: None, or, when values so large that their squares overflow made a
    finite row's norm or dot product non-finite, a power of two for each such row (1 for the
    others, ``_scaling``) that the norms, the dot products and the weighted sum after them apply
    to the row first: its cosine and its term ``||g_0|| V_i / ||V_i||`` are scale-free."""
    n = vectors.shape[0]
    squares = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    dots = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    for start, stop, part in _blocks(vectors, finite):
        squares += torch.linalg.vector_norm(part, dim=1).square()
        dots += part @ g0[start:stop]
    overflowed = finite & ~(torch.isfinite(squares) & torch.isfinite(dots))
    if not bool(overflowed.any()):
        return squares.sqrt(), dots, None
    peaks = torch.zeros(n, dtype=torch.float64, device=vectors.device)
    for _, _, part in _blocks(vectors, finite):
        peaks = torch.maximum(peaks, part.abs().amax(dim=1))
    # those rows scaled to at most 1: their squares and dot products with g0 cannot overflow
    scales = torch.where(overflowed, downscales(peaks, headroom=0), torch.ones_like(peaks))
    squares.zero_()
    dots.zero_()
    for start, stop, part in _blocks(vectors, finite, scales):
        squares += torch.linalg.vector_norm(part, dim=1).square()
        dots += part @ g0[start:stop]
    return squares.sqrt(), dots, scales


def _scores(norms: Tensor, dots: Tensor, g0: Tensor, finite: Tensor) -> Tensor:
    cos = dots / (norms.clamp_min(1e-300) * torch.linalg.vector_norm(g0))
    return torch.where(finite & (norms > 0), cos.clamp_min(0.0), torch.zeros_like(cos))


def trust_scores(vectors: Tensor, server_update: Tensor) -> Tensor:
    """``(n,)`` float64 ``max(0, cos(V_i, g_0))``; 0 for non-finite or zero rows."""
    finite = finite_mask(vectors)
    g0 = server_update.reshape(-1).to(device=vectors.device, dtype=torch.float64)
    norms, dots, _ = _norms_and_dots(vectors, g0, finite)
    return _scores(norms, dots, g0, finite)


def _fltrust_impl(vectors: Tensor, f: int = 0, server_update: Tensor | None = None) -> Aggregation:
    n, d, f = check_inputs("fltrust", vectors, f)
    if not isinstance(server_update, Tensor) or server_update.numel() != d:
        got = tuple(server_update.shape) if isinstance(server_update, Tensor) else server_update
        raise ValueError(f"fltrust: server_update must be a tensor of {d} values, got {got!r}")
    g0 = server_update.reshape(-1).to(device=vectors.device, dtype=torch.float64)
    if not all_finite(g0):
        raise ValueError("fltrust: server_update contains NaN or inf")
    g0_norm = torch.linalg.vector_norm(g0)
    if float(g0_norm) == 0.0:
        raise NoTrustError("fltrust: the server update is zero, every trust score is 0")
    finite = finite_mask(vectors)
    norms, dots, scales = _norms_and_dots(vectors, g0, finite)
    ts = _scores(norms, dots, g0, finite)
    total = ts.sum()
    if float(total) == 0.0:
        raise NoTrustError(f"fltrust: every trust score is 0 (n={n}); the model is kept")
    coef = ts * g0_norm / norms.clamp_min(1e-300) / total
    value = torch.empty(d, dtype=torch.float64, device=vectors.device)
    for start, stop, part in _blocks(vectors, finite, scales):  # second pass: the weighted sum
        value[start:stop] = coef @ part
    return Aggregation(value.to(vectors.dtype), None, (ts / total).cpu())


def fltrust(vectors: Tensor, f: int = 0, server_update: Tensor | None = None) -> Tensor:
    """Trust-weighted mean of the rows rescaled to ``||g_0||``; ``server_update`` is ``g_0``."""
    return _fltrust_impl(vectors, f, server_update).vector
