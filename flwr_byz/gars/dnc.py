"""Divide and conquer (Shejwalkar, Houmansadr, NDSS 2021), ALGORITHMS.md "Beyond the seeds".

``niters`` times: draw b coordinates without replacement (seeded), centre the rows on their mean
over them, score ``s_i = <V_i - mu, v>^2`` with v the top right singular vector, keep the
n - floor(c f) lowest scores (ties: smallest index). Output: the mean of the rows kept every time.

Choices beyond ALGORITHMS.md: the top singular direction comes from the float64 ``n x n`` Gram
matrix (``s_i = lambda u_i^2`` for its top eigenpair), exact and cheap for n << b. Rows with a
NaN/inf (at most f) get score +inf and are left out of the mean used for centring. Finite values
above 2**400 (squares that overflow) are handled on the rows scaled exactly by a power of two
(``_scaling``): the scores' ranking is scale-free. When the kept
sets have an empty intersection (possible for niters * c f >= n - c f), the rows kept in the most
iterations are averaged. Coordinates are drawn on the CPU from ``generator`` or ``seed`` (default
seed 0), so the result is deterministic per seed on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_inputs, finite_rows, require, uniform_participation
from ._scaling import downscale
from ._types import Aggregation


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("dnc: pass a generator or a seed, not both")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return generator


def dnc_scores(rows: Tensor, finite: Tensor) -> Tensor:
    """``(n,)`` float64 squared projections on the top principal direction (inf if non-finite)."""
    sub = torch.where(finite[:, None], rows, torch.zeros_like(rows)).to(torch.float64)
    scale = downscale(float(sub.abs().max())) if sub.numel() else 1.0
    if scale != 1.0:  # values whose squares overflow: the same ranking on exactly scaled rows
        sub = sub * scale
    mu = sub[finite].mean(dim=0)
    centred = torch.where(finite[:, None], sub - mu, torch.zeros_like(sub))
    gram = centred @ centred.T
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh((gram + gram.T) * 0.5)
    except torch.linalg.LinAlgError as err:  # a ValueError: the strategy keeps the model
        raise ValueError(f"dnc: the eigen-decomposition of the rows' Gram failed ({err})") from err
    scores = eigenvalues[-1].clamp_min(0.0) * eigenvectors[:, -1] ** 2
    return torch.where(finite, scores, torch.full_like(scores, float("inf")))


def _dnc_impl(
    vectors: Tensor,
    f: int,
    niters: int = 5,
    b: int = 10_000,
    c: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Aggregation:
    n, d, f = check_inputs("dnc", vectors, f)
    require("dnc", n, f, n >= 2 * f + 1, "n >= 2f + 1")
    if isinstance(niters, bool) or not isinstance(niters, int) or niters < 1:
        raise ValueError(f"dnc: niters must be an int >= 1, got {niters!r}")
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"dnc: b must be an int >= 1, got {b!r}")
    removed = int(float(c) * f)
    if not 0 <= removed < n:
        raise ValueError(f"dnc: c * f must lie in [0, n), got c={c}, f={f}, n={n}")
    finite = finite_rows("dnc", vectors, f)
    gen = _generator(generator, seed)
    b = min(b, d)
    counts = torch.zeros(n, dtype=torch.int64)
    for _ in range(niters):
        cols = torch.randperm(d, generator=gen, device=gen.device)[:b].sort().values
        scores = dnc_scores(vectors[:, cols.to(vectors.device)], finite).cpu()
        kept = torch.sort(scores, stable=True).indices[: n - removed]
        counts[kept] += 1
    good = torch.nonzero(counts == counts.max(), as_tuple=True)[0]  # == niters when non-empty
    value = vectors[good.to(vectors.device)].mean(dim=0)
    return Aggregation(value, good, uniform_participation(n, good))


def dnc(
    vectors: Tensor,
    f: int,
    niters: int = 5,
    b: int = 10_000,
    c: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Mean of the rows that survive ``niters`` seeded spectral filters (DnC)."""
    return _dnc_impl(vectors, f, niters, b, c, generator, seed).vector
