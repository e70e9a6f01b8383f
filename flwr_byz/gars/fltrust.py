"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021), ALGORITHMS.md "Beyond the seeds".

``TS_i = max(0, cos(V_i, g_0))`` with ``g_0`` the server's own update on its root data; output
``sum_i TS_i ||g_0|| / ||V_i|| V_i / sum_i TS_i``. The server update is an argument: the kernel
stays pure, the strategy computes ``g_0`` from the global model.

Choices beyond ALGORITHMS.md: a row with a NaN/inf or zero norm gets trust 0 (its cosine is
undefined). When every trust score is 0 the kernel raises ``NoTrustError`` (a ``ValueError``), so a
strategy keeps the model and reports why. f plays no part (accepted for the uniform signature).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_inputs, finite_mask
from ._types import Aggregation


class NoTrustError(ValueError):
    """Every input has trust score 0: there is nothing to aggregate (keep the model)."""


def trust_scores(vectors: Tensor, server_update: Tensor) -> Tensor:
    """``(n,)`` float64 ``max(0, cos(V_i, g_0))``; 0 for non-finite or zero rows."""
    finite = finite_mask(vectors)
    rows = torch.where(finite[:, None], vectors, torch.zeros_like(vectors)).to(torch.float64)
    g0 = server_update.reshape(-1).to(device=vectors.device, dtype=torch.float64)
    norms = torch.linalg.vector_norm(rows, dim=1)
    cos = (rows @ g0) / (norms.clamp_min(1e-300) * torch.linalg.vector_norm(g0))
    return torch.where(finite & (norms > 0), cos.clamp_min(0.0), torch.zeros_like(cos))


def _fltrust_impl(vectors: Tensor, f: int = 0, server_update: Tensor | None = None) -> Aggregation:
    n, d, f = check_inputs("fltrust", vectors, f)
    if not isinstance(server_update, Tensor) or server_update.numel() != d:
        got = tuple(server_update.shape) if isinstance(server_update, Tensor) else server_update
        raise ValueError(f"fltrust: server_update must be a tensor of {d} values, got {got!r}")
    g0 = server_update.reshape(-1).to(device=vectors.device, dtype=torch.float64)
    if not bool(torch.isfinite(g0).all()):
        raise ValueError("fltrust: server_update contains NaN or inf")
    g0_norm = torch.linalg.vector_norm(g0)
    if float(g0_norm) == 0.0:
        raise NoTrustError("fltrust: the server update is zero, every trust score is 0")
    ts = trust_scores(vectors, g0)
    total = ts.sum()
    if float(total) == 0.0:
        raise NoTrustError(f"fltrust: every trust score is 0 (n={n}); the model is kept")
    finite = finite_mask(vectors)
    rows = torch.where(finite[:, None], vectors, torch.zeros_like(vectors)).to(torch.float64)
    norms = torch.linalg.vector_norm(rows, dim=1).clamp_min(1e-300)
    coef = ts * g0_norm / norms / total
    value = (coef[:, None] * rows).sum(dim=0).to(vectors.dtype)
    return Aggregation(value, None, (ts / total).cpu())


def fltrust(vectors: Tensor, f: int = 0, server_update: Tensor | None = None) -> Tensor:
    """Trust-weighted mean of the rows rescaled to ``||g_0||``; ``server_update`` is ``g_0``."""
    return _fltrust_impl(vectors, f, server_update).vector
